// The `options` startup parameter, read as the backend reads it: split into words by pg_split_opts
// (src/backend/utils/init/postinit.c), then parsed with getopt by process_postgres_switches
// (src/backend/tcop/postgres.c), whose `-c` and `--` switches go through ParseLongOption
// (src/backend/utils/misc/guc.c). Both passes are single scans: linear in the string's length.

/** A run-time parameter that an `options` string sets, as the server would look it up. */
export interface OptionSetting {
  /** ASCII-lower-cased, `-` read as `_` (ParseLongOption, guc_name_compare). */
  name: string
  /** The word (or pair of words) that sets it, as the client wrote it, for messages. */
  spelling: string
}

// C isspace() in the "C" locale: space, \t, \n, \v, \f, \r.
const ASCII_SPACE = new Set([0x20, 0x09, 0x0a, 0x0b, 0x0c, 0x0d])

/**
 * pg_split_opts: whitespace separates words, a backslash makes the next character part of the
 * word (a trailing backslash is dropped). `nonAsciiSeparates` also ends a word at every non-ASCII
 * character: in a single-byte server locale, isspace() may be true for a byte of its UTF-8 form
 * (0xA0 in U+00A0), so a caller that must not under-split can ask for both readings.
 */
export function splitOptions(options: string, nonAsciiSeparates = false): string[] {
  const words: string[] = []
  let word: string[] = []
  let inWord = false
  let escaped = false
  for (const ch of options) {
    const code = ch.codePointAt(0) as number
    if (nonAsciiSeparates && code > 0x7f) {
      // Any space byte of a multi-byte character is a continuation byte, which a backslash before
      // the character does not reach: it separates even then.
      escaped = false
      if (inWord) words.push(word.join(''))
      word = []
      inWord = false
    } else if (escaped) {
      word.push(ch)
      escaped = false
    } else if (ch === '\\') {
      escaped = true
      inWord = true
    } else if (ASCII_SPACE.has(code)) {
      if (inWord) words.push(word.join(''))
      word = []
      inWord = false
    } else {
      word.push(ch)
      inWord = true
    }
  }
  if (inWord) words.push(word.join(''))
  return words
}

/** Switch letters that take a value, from process_postgres_switches' getopt string. */
const TAKES_VALUE = new Set('BCDNSWcdfhkprtv-')

/**
 * Every parameter that `-c name=value`, `-cname=value`, `--name=value` sets among `words`, also
 * when the switch is grouped behind flags (`-ec name=value`, `-e-name=value`), as getopt reads a
 * group. Letters the server does not know are read as flags without a value, so nothing later in
 * the group escapes (the server refuses such a string anyway). Words that are not switches, and
 * `--` (after which the server refuses any word), do not stop the scan either.
 */
export function optionSettings(words: readonly string[]): OptionSetting[] {
  const settings: OptionSetting[] = []
  for (let i = 0; i < words.length; i++) {
    const word = words[i] as string
    if (word.length < 2 || word[0] !== '-' || word === '--') continue
    for (let j = 1; j < word.length; j++) {
      const letter = word[j] as string
      if (!TAKES_VALUE.has(letter)) continue
      let value: string | undefined = word.slice(j + 1)
      let spelling = word
      if (value === '') {
        value = words[++i]
        spelling = `${word} ${value ?? ''}`
      }
      if (value !== undefined && (letter === 'c' || letter === '-'))
        settings.push({ name: settingName(value), spelling })
      break
    }
  }
  return settings
}

/** ParseLongOption's name (up to the first `=`, `-` as `_`), folded as GUC names are compared. */
function settingName(assignment: string): string {
  const equals = assignment.indexOf('=')
  const name = equals < 0 ? assignment : assignment.slice(0, equals)
  return name.replace(/[A-Z-]/g, (ch) => (ch === '-' ? '_' : ch.toLowerCase()))
}
