import fc from 'fast-check'
import t from 'tap'
import { optionSettings, splitOptions } from '../../src/pgwire/startup-options.js'

const names = (options: string): string[] => optionSettings(splitOptions(options)).map((s) => s.name)

void t.test('splitOptions splits as pg_split_opts: ASCII whitespace, backslash escapes', async (t) => {
  t.same(splitOptions('  -c  a=b\\ c   d\\\\e '), ['-c', 'a=b c', 'd\\e'])
  t.same(splitOptions('\t-e\n-c\vx=1\f\r'), ['-e', '-c', 'x=1'])
  t.same(splitOptions('a\\'), ['a'], 'a trailing backslash is dropped')
  t.same(splitOptions('a \\'), ['a', ''], 'a lone trailing backslash is an empty word')
  t.same(splitOptions(''), [])
  t.same(splitOptions('x\u00a0y'), ['x\u00a0y'], 'U+00A0 is not a C-locale space')
  t.same(splitOptions('x\u00a0y', true), ['x', 'y'], '…but separates when non-ASCII separates')
  t.same(splitOptions('x\\\u00e9y', true), ['x', 'y'], 'a backslash does not reach the continuation byte')
})

void t.test('optionSettings reads switches as getopt does, grouped flags included', async (t) => {
  t.same(names('-c role=x'), ['role'])
  t.same(names('-crole=x'), ['role'])
  t.same(names('--role=x'), ['role'])
  t.same(names('-ecrole=x'), ['role'], 'e is a flag without a value: c follows in the same group')
  t.same(names('-ec role=x'), ['role'])
  t.same(names('-e-role=x'), ['role'], '- is a switch letter too')
  t.same(names('-FsPc ROLE=x'), ['role'], 'names fold to lower case')
  t.same(names('--Session-Authorization=x'), ['session_authorization'], '- reads as _')
  t.same(names('-c a=1 -c b'), ['a', 'b'], 'a setting without a value is still named (the server refuses it)')
  t.same(names('-Bcrole=x'), [], 'B takes a value: "crole=x" is shared_buffers')
  t.same(names('-B crole=x -c y=1'), ['y'], 'a separate value is consumed')
  t.same(names('-c -crole=x'), ['_crole'], 'the word after -c is its value, dash or not')
  t.same(names('-xcrole=x'), ['role'], 'an unknown letter does not hide what follows it')
  t.same(names('word -crole=x'), ['role'], 'the scan goes on after a non-switch word')
  t.same(names('-- -crole=x'), ['role'], 'and after --')
  t.same(names('-c'), [], '-c at the end has no value')
  t.same(optionSettings(['-e', '-c', 'role=x'])[0]?.spelling, '-c role=x', 'the spelling names the switch')
  t.same(names(`-${'e'.repeat(9_990)}crole=x`), ['role'], 'a group of 9990 flags, then c')
})

/**
 * The reference: getopt's rules written out one by one over a fixed alphabet. Letters here are
 * the ones the generator uses; "takes a value" is process_postgres_switches' getopt string.
 */
function referenceSetsRole(words: string[]): boolean {
  const valued = 'BCDNSWcdfhkprtv-'
  let i = 0
  while (i < words.length) {
    const word = words[i]!
    i++
    if (!word.startsWith('-') || word === '-' || word === '--') continue
    let j = 1
    while (j < word.length) {
      const letter = word.charAt(j)
      j++
      if (!valued.includes(letter)) continue
      let value: string | undefined
      if (j < word.length) value = word.substring(j)
      else {
        value = words[i]
        i++
      }
      if ((letter === 'c' || letter === '-') && value !== undefined) {
        const name = value.split('=')[0]!.toLowerCase().split('-').join('_')
        if (name === 'role') return true
      }
      break
    }
  }
  return false
}

void t.test('property: optionSettings finds role exactly when the getopt reference does', async (t) => {
  const piece = fc.constantFrom('-', '-c', '--', 'c', 'e', 'B', 'x', 'role', 'ROLE', '=x', 'rol', 'e=', '-e')
  const word = fc.array(piece, { minLength: 1, maxLength: 4 }).map((parts) => parts.join(''))
  fc.assert(
    fc.property(fc.array(word, { maxLength: 5 }), (words) => {
      const found = optionSettings(words).some((s) => s.name === 'role')
      return found === referenceSetsRole(words)
    }),
    { numRuns: 2_000 },
  )
  t.pass('2000 generated option lists agree')
})
