import t from 'tap'
import { filterOptions, splitClientStartup, splitOptions } from '../../src/proxy/startup-parameters.js'

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

void t.test('options: role switches are removed in every spelling, the rest kept and re-escaped', async (t) => {
  const stripped: string[] = []
  t.equal(filterOptions('-c role=postgres -c statement_timeout=5s', stripped), '-c statement_timeout=5s')
  t.equal(filterOptions('-crole=postgres --search-path=a\\ b', stripped), '--search-path=a\\ b')
  t.equal(filterOptions('--role=x --session-authorization=y -c SESSION_AUTHORIZATION=z', stripped), '')
  t.equal(filterOptions('-c ROLE=x', stripped), '')
  t.same(stripped, [
    'options:role',
    'options:role',
    'options:role',
    'options:session_authorization',
    'options:session_authorization',
    'options:role',
  ])
  t.same(splitOptions('  -c  a=b\\ c   d\\\\e '), ['-c', 'a=b c', 'd\\e'])
  t.same(
    splitClientStartup([
      ['user', 'u'],
      ['options', '-c role=x'],
    ]).forwarded,
    [],
    'options left empty is dropped',
  )
})
