import t from 'tap'
import { saslPrep, SaslPrepError, scramPassword } from '../../src/pgwire/sasl-prep.js'

void t.test('RFC 4013 §3 examples', (t) => {
  t.equal(saslPrep('I\u00ADX'), 'IX', 'SOFT HYPHEN mapped to nothing')
  t.equal(saslPrep('user'), 'user', 'no transformation')
  t.equal(saslPrep('USER'), 'USER', 'case preserved')
  t.equal(saslPrep('\u00AA'), 'a', 'output is NFKC, input in ISO 8859-1')
  t.equal(saslPrep('\u2168'), 'IX', 'output is NFKC')
  t.throws(() => saslPrep('\u0007'), SaslPrepError, 'prohibited character')
  t.throws(() => saslPrep('\u0627\u0031'), SaslPrepError, 'bidirectional check')
  t.end()
})

void t.test('mapping', (t) => {
  t.equal(saslPrep('a\u00A0b\u3000c'), 'a b c', 'non-ASCII spaces become U+0020')
  t.equal(saslPrep('a\u200Bb'), 'a b', 'ZERO WIDTH SPACE is a space (C.1.2 wins over B.1, as in PostgreSQL)')
  t.equal(saslPrep('pa\u200Css\uFE0Fw\uFEFFord'), 'password', 'B.1 characters are removed')
  t.throws(() => saslPrep('\u00AD\u034F'), { name: 'SaslPrepError', message: /empty/ }, 'empty after mapping')
  t.end()
})

void t.test('normalisation', (t) => {
  t.equal(saslPrep('e\u0301t\u00E9'), '\u00E9t\u00E9', 'composed')
  t.equal(saslPrep('\uFF21\uFF22'), 'AB', 'fullwidth letters folded')
  t.equal(saslPrep('\uFB01'), 'fi', 'ligature decomposed')
  t.end()
})

void t.test('prohibited output', (t) => {
  const prohibited: [string, string][] = [
    ['C.2.1 ASCII control', 'a\u001Fb\u00E9'],
    ['C.2.1 DEL', '\u007F\u00E9'],
    ['C.2.2 non-ASCII control', 'a\u0085b'],
    ['C.2.2 musical symbol', 'a\u{1D173}'],
    ['C.3 private use', 'a\uE000'],
    ['C.3 supplementary private use', 'a\u{100000}'],
    ['C.4 non-character', 'a\uFDD0'],
    ['C.4 plane non-character', 'a\u{2FFFE}'],
    ['C.5 lone surrogate', 'a\uD800b'],
    ['C.6 replacement character', 'a\uFFFD'],
    ['C.7 ideographic description', 'a\u2FF0'],
    ['C.8 left-to-right mark', 'a\u200E'],
    ['C.8 deprecated, checked before NFKC as PostgreSQL does', 'a\u0340'],
    ['C.9 tagging', 'a\u{E0001}'],
    ['A.1 unassigned in Unicode 3.2 (emoji)', 'p\u{1F600}ss'],
  ]
  for (const [name, input] of prohibited) t.throws(() => saslPrep(input), { name: 'SaslPrepError' }, name)
  t.end()
})

void t.test('bidi rules', (t) => {
  t.equal(saslPrep('\u0627\u0628'), '\u0627\u0628', 'all RandALCat')
  t.equal(saslPrep('\u05D0 1 \u05D1'), '\u05D0 1 \u05D1', 'neutral and digits between RandALCat')
  t.throws(() => saslPrep('\u0627a\u0628'), { message: /mixes/ }, 'RandALCat with LCat')
  t.throws(() => saslPrep('1\u0627'), { message: /start and end/ }, 'must start with RandALCat')
  t.equal(saslPrep('\u00E9a1'), '\u00E9a1', 'no RandALCat: no bidi constraints')
  t.end()
})

void t.test('printable ASCII fast path', (t) => {
  const ascii = ' !"#$%&\'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~'
  t.equal(saslPrep(ascii), ascii)
  t.equal(saslPrep(''), '', 'empty password is left alone, as PostgreSQL does')
  t.end()
})

void t.test('scramPassword falls back to the raw password, as PostgreSQL does', (t) => {
  t.equal(scramPassword('I\u00ADX'), 'IX')
  t.equal(scramPassword('\u0007'), '\u0007')
  t.equal(scramPassword('\u0627\u0031'), '\u0627\u0031')
  t.equal(scramPassword('e\u0301\u{1F600}'), 'e\u0301\u{1F600}', 'unassigned in 3.2: not even normalised')
  t.equal(scramPassword('plain'), 'plain')
  t.end()
})

void t.test('very long input does not overflow the stack', (t) => {
  t.equal(saslPrep('\u00E9'.repeat(200_000)).length, 200_000)
  t.end()
})
