import t from 'tap'
import { matchesGlobList } from '../../dev-vault/glob.js'

void t.test('bound service account globs: * matches any run, nothing else is special', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['app', 'app', true],
    ['app', 'apps', false],
    ['*', '', true],
    ['*', 'anything', true],
    ['app-*', 'app-1', true],
    ['app-*', 'ap-1', false],
    ['*-web', 'shop-web', true],
    ['a*b*c', 'abc', true],
    ['a*b*c', 'axxbyyc', true],
    ['a*b*c', 'acb', false],
    ['ab*ba', 'aba', false],
    ['a.b', 'axb', false],
    ['a*a*a*a*b', 'a'.repeat(50_000), false],
  ]
  for (const [pattern, value, expected] of cases)
    t.equal(matchesGlobList([pattern], value), expected, `${pattern} ~ ${value.slice(0, 20)}`)
  t.ok(matchesGlobList(['x', 'a*'], 'abc'), 'any pattern of the list')
})
