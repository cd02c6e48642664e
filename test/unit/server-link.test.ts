import t from 'tap'
import { linkableName } from '../../src/proxy/linkable-parameters.js'
import { linkSettings } from '../../src/proxy/server-link.js'
import { ServerPool } from '../../src/proxy/server-pool.js'

void t.test('linkable names are matched ignoring case and given as the server reports them', async (t) => {
  t.equal(linkableName('timezone'), 'TimeZone')
  t.equal(linkableName('TIMEZONE'), 'TimeZone')
  t.equal(linkableName('intervalstyle'), 'IntervalStyle')
  t.equal(linkableName('application_name'), 'application_name')
  for (const name of [
    'DateStyle',
    'datestyle',
    'is_superuser',
    'session_authorization',
    'server_version',
    'options',
    'work_mem',
  ])
    t.equal(linkableName(name), undefined, name)
})

void t.test('the pool key counts linkable parameters by name only, others by name and value', async (t) => {
  const key = (...forwarded: Array<[string, string]>): string => ServerPool.key('db', forwarded)
  t.equal(
    key(['application_name', 'a'], ['TimeZone', 'UTC']),
    key(['TimeZone', 'Asia/Tokyo'], ['application_name', 'b']),
  )
  t.equal(key(['timezone', 'UTC']), key(['TimeZone', 'UTC']), 'one parameter, however spelled')
  t.equal(key(['timezone', 'UTC'], ['TimeZone', 'UTC']), key(['TimeZone', 'UTC']), 'sent twice: still the one name')
  t.not(key(['application_name', 'a']), key(), 'a client that did not send it does not match')
  t.not(key(['options', '-c work_mem=1MB']), key(['options', '-c work_mem=2MB']))
  t.not(key(['DateStyle', 'ISO']), key(['DateStyle', 'SQL']), 'DateStyle is not linkable')
  t.not(ServerPool.key('db1', []), ServerPool.key('db2', []))
})

void t.test('link settings: what differs, the last value per name, client_encoding last', async (t) => {
  const current = new Map([
    ['application_name', 'first'],
    ['TimeZone', 'UTC'],
    ['client_encoding', 'UTF8'],
  ])
  t.same(
    linkSettings(current, [
      ['application_name', 'first'],
      ['timezone', 'UTC'],
      ['options', '-c x=1'],
    ]),
    [],
    'nothing to set',
  )
  t.same(
    linkSettings(current, [
      ['client_encoding', 'utf8'],
      ['application_name', 'second'],
      ['timezone', 'Europe/Paris'],
      ['TimeZone', 'Asia/Tokyo'],
    ]),
    [
      ['application_name', 'second'],
      ['TimeZone', 'Asia/Tokyo'],
      ['client_encoding', 'utf8'],
    ],
  )
  t.same(linkSettings(current, [['search_path', 'a, b']]), [['search_path', 'a, b']], 'not reported: always set')
})
