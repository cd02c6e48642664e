import t from 'tap'
import type { ProxyError } from '../../src/proxy/proxy-error.js'
import { splitClientStartup } from '../../src/proxy/startup-parameters.js'

void t.test('forwards everything but what the proxy owns', async (t) => {
  const s = splitClientStartup([
    ['user', 'alice'],
    ['database', 'appdb'],
    ['client_encoding', 'LATIN1'],
    ['extra_float_digits', '3'],
    ['role', 'postgres'],
    ['Session_Authorization', 'postgres'],
    ['_pq_.compression', 'on'],
    ['replication', 'false'],
    ['application_name', 'psql'],
  ])
  t.equal(s.clientUser, 'alice')
  t.equal(s.database, 'appdb')
  t.same(s.forwarded, [
    ['client_encoding', 'LATIN1'],
    ['extra_float_digits', '3'],
    ['application_name', 'psql'],
  ])
  t.same(s.unsupportedProtocolOptions, ['_pq_.compression'])
  t.same(s.stripped, ['role', 'Session_Authorization'])
})

void t.test('replication connections are refused with 0A000', async (t) => {
  for (const value of ['true', 'database', 'on', '1']) {
    t.throws(
      () =>
        splitClientStartup([
          ['user', 'u'],
          ['replication', value],
        ]),
      { name: 'ProxyError', clientError: { sqlState: '0A000' } },
    )
  }
})

void t.test('options that set role or session_authorization are refused with 42501, in every spelling', async (t) => {
  const withOptions = (options: string): ReturnType<typeof splitClientStartup> =>
    splitClientStartup([
      ['user', 'u'],
      ['options', options],
    ])
  for (const options of [
    '-c role=postgres',
    '-crole=postgres',
    '--role=postgres',
    '-c ROLE=x',
    '--Session-Authorization=y',
    '-c session_authorization=z',
    '-ecrole=postgres',
    '-ec role=postgres',
    '-e -c role=postgres',
    '-Fe-role=postgres',
    '-c statement_timeout=5s -c role=postgres',
    'stray -crole=postgres',
    '-- -crole=postgres',
    // U+00A0 holds the byte 0xA0, a space to isspace() in some single-byte server locales.
    '-c application_name=x\u00a0-crole=postgres',
  ]) {
    t.throws(
      () => withOptions(options),
      { name: 'ProxyError', reason: 'options_refused', clientError: { sqlState: '42501' } },
      options,
    )
  }
  const err = (() => {
    try {
      withOptions('-ecrole=postgres')
    } catch (e) {
      return e as ProxyError
    }
    return undefined
  })()
  t.match(err?.message, /"-ecrole=postgres" sets role/, 'the message quotes the switch')
  t.match(err?.clientError.hint, /PGOPTIONS/, 'the hint says where options come from')
  t.notMatch(err?.message, /GRANT/, 'no advice to grant the role')
})

void t.test('other options are forwarded verbatim, values that only look like role included', async (t) => {
  for (const options of [
    '-c statement_timeout=5s',
    '--search-path=a\\ b',
    '-c application_name=role=x',
    '-B crole=x',
    '-c -crole=x',
    '-c roles=x',
    '-c my.role=x',
    '-e',
  ]) {
    t.same(
      splitClientStartup([
        ['user', 'u'],
        ['options', options],
      ]).forwarded,
      [['options', options]],
      options,
    )
  }
})
