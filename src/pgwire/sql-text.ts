// Just enough reading of SQL text for the proxy to know when a session's state may have changed
// and to pull one PREPARE out of a multi-statement query. It never decides what SQL means: a
// false positive costs one state probe, and the probe (not this file) says what the state is.
//
// The text comes from clients (Query and Parse messages, up to 64 KiB each), so every function here
// reads it in forward passes that never step back: time linear in its length, whatever it holds.
// Regular expressions were not: `set_config('` and 60,000 dots took seconds of backtracking, during
// which no other session moved.

/** Words that can change session state from inside any statement (a SELECT of set_config, pg_advisory_lock...). */
const STATE_SUBSTRINGS = ['set_config', 'advisory', 'pg_temp']
/** ... and whole words that can (CREATE TEMP TABLE; DECLARE ... WITH HOLD). */
const STATE_WHOLE_WORDS = ['temp', 'temporary', 'hold']
/** Statements that may change session state by their first word; a SELECT only with INTO. */
const STATE_VERBS = new Set([
  'set',
  'reset',
  'prepare',
  'deallocate',
  'listen',
  'unlisten',
  'discard',
  'declare',
  'create',
  'do',
  'call',
  'load',
])

/** Characters the scanner examined since the process started, for tests that prove its passes linear. */
let examined = 0
export function charactersExamined(): number {
  return examined
}

/**
 * Could running `sql` change session state that a new upstream connection would need (a setting,
 * a prepared statement, a LISTEN, a temp table, a holdable cursor, an advisory lock)? Errs on yes.
 */
export function mayChangeSessionState(sql: string): boolean {
  if (hasStateWord(sql)) return true
  let atStart = true
  let isSelect = false
  let changes = false
  lex(sql, (token) => {
    if (token.depth !== 0 || token.kind === Kind.Comment) return false
    if (token.kind === Kind.Semicolon) {
      atStart = true
      isSelect = false
    } else if (atStart) {
      atStart = false
      const verb = token.kind === Kind.Word && token.end - token.start <= 10 ? wordAt(sql, token) : ''
      isSelect = verb === 'select'
      changes = STATE_VERBS.has(verb)
    } else if (isSelect && token.kind === Kind.Word && token.end - token.start === 4) {
      // SELECT ... INTO creates a table.
      changes = wordAt(sql, token) === 'into'
    }
    return changes
  })
  return changes
}

/**
 * Does some statement of `sql` start with `word` (ASCII letters, any case), after comments? For
 * example EXECUTE, which runs whatever its SQL prepared statement was prepared with.
 */
export function hasStatementStartingWith(sql: string, word: string): boolean {
  const wanted = asciiLower(word)
  let atStart = true
  let found = false
  lex(sql, (token) => {
    if (token.depth !== 0 || token.kind === Kind.Comment) return false
    if (token.kind === Kind.Semicolon) atStart = true
    else if (atStart) {
      atStart = false
      found = token.kind === Kind.Word && token.end - token.start === wanted.length && wordAt(sql, token) === wanted
    }
    return found
  })
  return found
}

/**
 * Names of custom (dotted) settings that `sql` may set, e.g. `app.tenant` from `SET app.tenant = 'x'`
 * or `set_config('app.tenant', ...)`. PostgreSQL hides these placeholders from pg_settings, so the
 * proxy asks for them by name. Dollar-quoted bodies (DO, CREATE FUNCTION) are read as SQL too.
 */
export function customSettingNames(sql: string): string[] {
  const fromSet: string[] = []
  const fromSetConfig: string[] = []
  // SET [SESSION] name[.name...] and set_config ( 'name', as small state machines over the tokens.
  let state: 'idle' | 'set' | 'session' | 'name' | 'dot' | 'set_config' | 'paren' = 'idle'
  let parts: string[] = []
  const endName = (): void => {
    // Dotted: two or more names, or one quoted name that holds the dots ("app.tenant").
    const name = parts.join('.')
    if (name.includes('.')) fromSet.push(name)
    parts = []
  }
  const step = (token: Token): void => {
    const dot = token.kind === Kind.Other && sql.charCodeAt(token.start) === DOT
    switch (state) {
      case 'set':
        if (token.kind === Kind.Word && token.end - token.start === 7 && wordAt(sql, token) === 'session') {
          state = 'session'
          return
        }
        break
      case 'session':
        if (isIdentifier(sql, token)) break
        // SET SESSION not followed by a name: "session" was the name (SET session.x = 1).
        parts = ['session']
        state = 'name'
        return step(token)
      case 'name':
        if (dot) {
          state = 'dot'
          return
        }
        endName()
        state = 'idle'
        break
      case 'set_config':
        state = token.kind === Kind.Other && sql.charCodeAt(token.start) === OPEN_PAREN ? 'paren' : 'idle'
        if (state === 'paren') return
        break
      case 'paren':
        if (token.kind === Kind.String && !token.dollar) {
          const name = stringValue(sql, token)
          const at = name.indexOf('.', 1)
          if (at > 0 && at < name.length - 1) fromSetConfig.push(asciiLower(name))
        }
        state = 'idle'
        break
    }
    if (state === 'set' || state === 'session' || state === 'dot') {
      if (isIdentifier(sql, token)) {
        parts.push(identifierValue(sql, token))
        state = 'name'
        return
      }
      endName()
      state = 'idle'
    }
    if (token.kind === Kind.Word && token.end - token.start <= 10) {
      const word = wordAt(sql, token)
      if (word === 'set') state = 'set'
      else if (word === 'set_config') state = 'set_config'
    }
  }
  lex(sql, (token) => {
    // A dollar-quoted string's tokens were seen one by one (depth 1); the string as a whole is not a name.
    if (token.kind !== Kind.Comment && !(token.kind === Kind.String && token.dollar)) step(token)
    return false
  })
  endName()
  return [...new Set([...fromSet, ...fromSetConfig])]
}

/**
 * Splits a query string into statements at top-level semicolons, skipping quoted strings, quoted
 * identifiers, dollar quotes and comments. Each statement is returned with leading comments and
 * whitespace removed; empty statements are dropped.
 */
export function splitStatements(sql: string): string[] {
  return topLevelStatements(sql).map(({ start, end }) => sql.slice(start, end))
}

/**
 * The one `PREPARE <name> ...` statement in a query string that may hold several (PostgreSQL keeps
 * the whole string in pg_prepared_statements.statement), or undefined when it cannot be told apart.
 */
export function prepareStatementFor(queryString: string, name: string): string | undefined {
  const matches = topLevelStatements(queryString).filter(
    (statement) => statement.prepares !== undefined && statement.prepares === name,
  )
  const [only] = matches
  return matches.length === 1 && only ? queryString.slice(only.start, only.end) : undefined
}

/** An escape-string literal: right whatever standard_conforming_strings the client chose. */
export function quoteLiteral(value: string): string {
  return `E'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`
}

/** A quoted identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

interface Statement {
  start: number
  end: number
  /** The name a PREPARE statement gives, as PostgreSQL reads it. */
  prepares: string | undefined
}

/** Top-level statements: from the first token that is not a comment to the last token before the semicolon. */
function topLevelStatements(sql: string): Statement[] {
  const statements: Statement[] = []
  let current: Statement | undefined
  let tokens = 0
  let isPrepare = false
  lex(sql, (token) => {
    if (token.depth !== 0) return false
    if (token.kind === Kind.Semicolon) {
      if (current) statements.push(current)
      current = undefined
      return false
    }
    if (!current) {
      if (token.kind === Kind.Comment) return false
      current = { start: token.start, end: token.end, prepares: undefined }
      tokens = 0
    }
    current.end = token.end
    if (token.kind === Kind.Comment) return false
    tokens++
    if (tokens === 1)
      isPrepare = token.kind === Kind.Word && token.end - token.start === 7 && wordAt(sql, token) === 'prepare'
    else if (tokens === 2 && isPrepare && isIdentifier(sql, token)) current.prepares = identifierValue(sql, token)
    return false
  })
  if (current) statements.push(current)
  return statements
}

const Kind = {
  /** A keyword or unquoted identifier (letters, digits, _, $ and non-ASCII), or a number. */
  Word: 0,
  /** "a quoted identifier" */
  QuotedIdent: 1,
  /** 'a string', E'with escapes', or $tag$ a dollar-quoted one $tag$. */
  String: 2,
  Comment: 3,
  Semicolon: 4,
  /** Any other single character: operators, punctuation, a parameter's $. */
  Other: 5,
} as const
type Kind = (typeof Kind)[keyof typeof Kind]

/**
 * One token, reused for every call (a visitor must copy what it keeps). Tokens inside a
 * dollar-quoted string have depth 1 and come before the string itself (depth 0, at its end).
 */
interface Token {
  kind: Kind
  start: number
  end: number
  depth: 0 | 1
  /** A String token that is dollar-quoted. */
  dollar: boolean
  /** A String token that is an E'' string, where a backslash escapes. */
  escapes: boolean
}

const LINE_FEED = 10
const CARRIAGE_RETURN = 13
const DOUBLE_QUOTE = 34
const DOLLAR = 36
const SINGLE_QUOTE = 39
const OPEN_PAREN = 40
const ASTERISK = 42
const DASH = 45
const DOT = 46
const SLASH = 47
const SEMICOLON = 59
const BACKSLASH = 92

// Character classes as in src/backend/parser/scan.l: `space` (vertical tab included), ident_start
// (ASCII letters, _ and every non-ASCII character), ident_cont (ident_start, digits and $).
const SPACE = 1
const IDENT_START = 2
const IDENT_CONT = 4
const DIGIT = 8
/** An ASCII word character, as \w in a JavaScript regular expression. */
const ASCII_WORD = 16
const ASCII_CLASSES = new Uint8Array(128)
for (let c = 0; c < 128; c++) {
  const letter = (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95
  const digit = c >= 48 && c <= 57
  ASCII_CLASSES[c] =
    (c === 32 || (c >= 9 && c <= 13) ? SPACE : 0) |
    (letter ? IDENT_START | IDENT_CONT | ASCII_WORD : 0) |
    (digit ? DIGIT | IDENT_CONT | ASCII_WORD : 0) |
    (c === DOLLAR ? IDENT_CONT : 0)
}
const NON_ASCII = IDENT_START | IDENT_CONT

/** The classes of the character at i (callers keep i inside the text). */
function classAt(sql: string, i: number): number {
  const c = sql.charCodeAt(i)
  return c < 128 ? (ASCII_CLASSES[c] as number) : NON_ASCII
}

function asciiLowerCode(c: number): number {
  return c >= 65 && c <= 90 ? c + 32 : c
}

/**
 * The lexer: PostgreSQL's token boundaries (src/backend/parser/scan.l), one forward pass. A
 * dollar-quoted string's contents are lexed as SQL too (they are DO and function bodies), but end,
 * as in PostgreSQL, at the first occurrence of the closing tag whatever they contain. Unterminated
 * quotes and comments run to the end of the text. `visit` returns true to stop early.
 */
function lex(sql: string, visit: (token: Token) => boolean): void {
  const n = sql.length
  const token: Token = { kind: Kind.Other, start: 0, end: 0, depth: 0, dollar: false, escapes: false }
  /** Where the current region ends: the text's end, or the open dollar quote's closing tag. */
  let limit = n
  let depth: 0 | 1 = 0
  /** The open dollar-quoted string, closing tag included. */
  let quoteStart = 0
  let quoteEnd = 0
  let work = 0
  let i = 0
  for (;;) {
    if (i >= limit) {
      if (depth === 0) break
      // The dollar-quoted string, as one token, after the tokens of its body.
      depth = 0
      limit = n
      i = quoteEnd
      token.kind = Kind.String
      token.start = quoteStart
      token.end = quoteEnd
      token.depth = 0
      token.dollar = true
      token.escapes = false
      if (visit(token)) break
      continue
    }
    work++
    const c = sql.charCodeAt(i)
    const classes = c < 128 ? (ASCII_CLASSES[c] as number) : NON_ASCII
    if (classes & SPACE) {
      i++
      continue
    }
    let kind: Kind = Kind.Other
    let end = i + 1
    let escapes = false
    if (classes & IDENT_START) {
      while (end < limit && classAt(sql, end) & IDENT_CONT) end++
      kind = Kind.Word
      // A one-letter prefix glued to a quote: E'...' (backslash escapes), B'', X'', N''.
      const prefix = end - i === 1 && end < limit && sql.charCodeAt(end) === SINGLE_QUOTE ? asciiLowerCode(c) : 0
      if (prefix === 101 || prefix === 98 || prefix === 120 || prefix === 110) {
        escapes = prefix === 101
        kind = Kind.String
        end = escapes ? skipEscapeString(sql, end, limit) : skipQuoted(sql, end, limit, "'")
      }
    } else if (classes & DIGIT) {
      while (end < limit && classAt(sql, end) & ASCII_WORD) end++
      kind = Kind.Word
    } else if (c === SINGLE_QUOTE) {
      kind = Kind.String
      end = skipQuoted(sql, i, limit, "'")
    } else if (c === DOUBLE_QUOTE) {
      kind = Kind.QuotedIdent
      end = skipQuoted(sql, i, limit, '"')
    } else if (c === DASH && sql.charCodeAt(i + 1) === DASH && i + 1 < limit) {
      kind = Kind.Comment
      end = i + 2
      while (end < limit) {
        const d = sql.charCodeAt(end)
        if (d === LINE_FEED || d === CARRIAGE_RETURN) break
        end++
      }
    } else if (c === SLASH && sql.charCodeAt(i + 1) === ASTERISK && i + 1 < limit) {
      kind = Kind.Comment
      end = skipBlockComment(sql, i, limit)
    } else if (c === SEMICOLON) {
      kind = Kind.Semicolon
    } else if (c === DOLLAR && depth === 0) {
      const tagEnd = dollarTagEnd(sql, i, limit)
      if (tagEnd > 0) {
        // Inside, another tag is only text to PostgreSQL's lexer: the body is read as SQL.
        const close = sql.indexOf(sql.slice(i, tagEnd), tagEnd)
        quoteStart = i
        quoteEnd = close < 0 ? n : close + (tagEnd - i)
        limit = close < 0 ? n : close
        depth = 1
        work += (close < 0 ? n : quoteEnd) - i
        i = tagEnd
        continue
      }
    }
    work += end - i
    token.kind = kind
    token.start = i
    token.end = end
    token.depth = depth
    token.dollar = false
    token.escapes = escapes
    i = end
    if (visit(token)) break
  }
  examined += work
}

/**
 * From an opening quote to just past its closing one (or `limit`); a doubled quote is part of the
 * text. Each search starts at an occurrence of the quote and finds the next one, so the searches
 * over a whole text never overlap.
 */
function skipQuoted(sql: string, open: number, limit: number, quote: string): number {
  let j = open + 1
  for (;;) {
    const close = sql.indexOf(quote, j)
    examined += (close < 0 ? sql.length : close) - j + 1
    if (close < 0 || close >= limit) return limit
    if (close + 1 < limit && sql[close + 1] === quote) j = close + 2
    else return close + 1
  }
}

/** An E'' string: a backslash escapes the next character. */
function skipEscapeString(sql: string, open: number, limit: number): number {
  let j = open + 1
  while (j < limit) {
    const c = sql.charCodeAt(j)
    if (c === BACKSLASH) j += 2
    else if (c !== SINGLE_QUOTE) j++
    else if (j + 1 < limit && sql.charCodeAt(j + 1) === SINGLE_QUOTE) j += 2
    else {
      examined += j - open
      return j + 1
    }
  }
  examined += limit - open
  return limit
}

/** Block comments nest in PostgreSQL. */
function skipBlockComment(sql: string, open: number, limit: number): number {
  let depth = 0
  let j = open
  while (j < limit) {
    const c = sql.charCodeAt(j)
    if (c === SLASH && sql.charCodeAt(j + 1) === ASTERISK) {
      depth++
      j += 2
    } else if (c === ASTERISK && sql.charCodeAt(j + 1) === SLASH) {
      depth--
      j += 2
      if (depth === 0) break
    } else j++
  }
  examined += j - open
  return Math.min(j, limit)
}

/** Past the closing $ of a dollar-quote tag ($$ or $name$) starting at `at`, or 0 if there is none. */
function dollarTagEnd(sql: string, at: number, limit: number): number {
  let j = at + 1
  if (j < limit && sql.charCodeAt(j) === DOLLAR) return j + 1
  if (j >= limit || !(classAt(sql, j) & IDENT_START)) return 0
  do j++
  while (j < limit && classAt(sql, j) & IDENT_CONT && sql.charCodeAt(j) !== DOLLAR)
  examined += j - at
  return j < limit && sql.charCodeAt(j) === DOLLAR ? j + 1 : 0
}

/**
 * Is one of STATE_SUBSTRINGS inside a word, or one of STATE_WHOLE_WORDS a word, anywhere in the
 * text (comments and strings included: a false positive costs a probe)? Words are runs of ASCII
 * letters, digits and underscores. Native searches, each linear in the text.
 */
function hasStateWord(sql: string): boolean {
  const lower = sql.toLowerCase()
  examined += lower.length * (1 + STATE_SUBSTRINGS.length)
  if (STATE_SUBSTRINGS.some((wanted) => lower.includes(wanted))) return true
  for (const word of STATE_WHOLE_WORDS) {
    // Each search starts past the last occurrence: together they read the text once per word.
    for (let at = lower.indexOf(word); at >= 0; at = lower.indexOf(word, at + 1)) {
      examined += word.length
      if (at > 0 && classAt(lower, at - 1) & ASCII_WORD) continue
      const end = at + word.length
      if (end >= lower.length || !(classAt(lower, end) & ASCII_WORD)) return true
    }
    examined += lower.length
  }
  return false
}

/** A Word token's text, ASCII letters folded to lower case. */
function wordAt(sql: string, token: Token): string {
  return asciiLower(sql.slice(token.start, token.end))
}

/** A token that names something: an unquoted identifier, or a quoted one with something in it. */
function isIdentifier(sql: string, token: Token): boolean {
  if (token.kind === Kind.Word) return (classAt(sql, token.start) & IDENT_START) !== 0
  return (
    token.kind === Kind.QuotedIdent && token.end - token.start > 2 && sql.charCodeAt(token.end - 1) === DOUBLE_QUOTE
  )
}

/** The name PostgreSQL makes of an identifier: quoted ones kept as written, others folded to lower case. */
function identifierValue(sql: string, token: Token): string {
  if (token.kind === Kind.Word) return wordAt(sql, token)
  return sql.slice(token.start + 1, token.end - 1).replaceAll('""', '"')
}

/** A quoted string's value: '' is one quote; in an E'' string a backslash takes the next character as is. */
function stringValue(sql: string, token: Token): string {
  const open = sql.indexOf("'", token.start)
  const close = token.end - 1 > open && sql.charCodeAt(token.end - 1) === SINGLE_QUOTE ? token.end - 1 : token.end
  let text = sql.slice(open + 1, close).replaceAll("''", "'")
  if (token.escapes && text.includes('\\'))
    text = Array.from(text.split('\\\\'), (part) => part.replaceAll('\\', '')).join('\\')
  return text
}

/** PostgreSQL folds only ASCII letters in identifiers and setting names (UTF-8 databases). */
function asciiLower(text: string): string {
  let lower = ''
  let from = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c >= 65 && c <= 90) {
      lower += text.slice(from, i) + String.fromCharCode(c + 32)
      from = i + 1
    }
  }
  return from === 0 ? text : lower + text.slice(from)
}
