import fc from 'fast-check'
import pg from 'pg'
import t from 'tap'
import { ProxyError } from '../../src/proxy/proxy-error.js'
import { splitClientStartup } from '../../src/proxy/startup-parameters.js'
import { clusterFor } from '../support/pg-cluster.js'
import { startProxy } from '../support/proxy-harness.js'
import { runClient } from '../support/run-client.js'

// The proxy reads the `options` startup parameter as PostgreSQL does, so no spelling of a switch
// that sets role or session_authorization gets past it; checked against the server itself.
const cluster = await clusterFor(t)

/** What PostgreSQL 15 makes of `options` for a login user that may not become postgres. */
async function serverVerdict(options: string): Promise<'sets_owned' | 'accepted' | 'refused'> {
  const { user, password } = cluster.users.scram
  const client = new pg.Client({
    host: cluster.host,
    port: cluster.port,
    user,
    password,
    database: cluster.database,
    options,
  })
  client.on('error', () => {})
  try {
    await client.connect()
    const row = (await client.query<{ r: string; s: string }>('select current_user as r, session_user as s')).rows[0]
    // A member could have switched for real; scram_user is not a member of postgres, so this stays.
    return row?.r === 'postgres' || row?.s === 'postgres' ? 'sets_owned' : 'accepted'
  } catch (err) {
    const message = (err as Error).message
    return /permission denied to set (?:role|session authorization)/.test(message) ? 'sets_owned' : 'refused'
  } finally {
    await client.end().catch(() => undefined)
  }
}

function proxyRefuses(options: string): boolean {
  try {
    splitClientStartup([
      ['user', 'u'],
      ['options', options],
    ])
    return false
  } catch (err) {
    if (err instanceof ProxyError && err.reason === 'options_refused') return true
    throw err
  }
}

void t.test('differential: the proxy refuses every options string the server would use to set role', async (t) => {
  const piece = fc.constantFrom(
    '-',
    '-c',
    '--',
    'c',
    'e',
    'P',
    'B',
    'role=postgres',
    'ROLE=postgres',
    'session-authorization=postgres',
    'application_name=x',
    '\\ ',
  )
  const free = fc.array(piece, { minLength: 1, maxLength: 3 }).map((parts) => parts.join(''))
  // Well-formed switches too, so that plenty of strings are ones the server accepts.
  const setting = fc.constantFrom(
    'role=postgres',
    'ROLE=postgres',
    'session-authorization=postgres',
    'application_name=x',
    'statement_timeout=5',
  )
  const grouped = fc
    .tuple(fc.constantFrom('', 'e', 'P', 'eP', 'E'), fc.constantFrom('c', '-', 'c '), setting)
    .map(([flags, letter, assignment]) => `-${flags}${letter}${assignment}`)
  const word = fc.oneof(
    { arbitrary: grouped, weight: 4 },
    { arbitrary: fc.constantFrom('-e', '-P'), weight: 1 },
    { arbitrary: free, weight: 1 },
  )
  const samples = fc.sample(
    fc.array(word, { minLength: 1, maxLength: 3 }).map((w) => w.join(' ')),
    {
      numRuns: 150,
      seed: 15,
    },
  )
  const known = [
    '-ecrole=postgres',
    '-e -c role=postgres',
    '-Pe-role=postgres',
    '-c application_name=x -crole=postgres',
  ]
  const missed: string[] = []
  const overRefused: string[] = []
  const seen = { sets_owned: 0, accepted: 0, refused: 0 }
  for (const options of [...known, ...new Set(samples)]) {
    const server = await serverVerdict(options)
    seen[server]++
    const refused = proxyRefuses(options)
    if (server === 'sets_owned' && !refused) missed.push(options)
    if (server === 'accepted' && refused) overRefused.push(options)
  }
  t.same(missed, [], 'no string that sets role upstream gets past the proxy')
  t.same(overRefused, [], 'no string the server accepts without setting role is refused')
  t.ok(seen.sets_owned >= 20 && seen.accepted >= 10, `both kinds were generated (${JSON.stringify(seen)})`)
})

void t.test('psql with PGOPTIONS: grouped role switches get 42501, other switches reach the server', async (t) => {
  const proxy = await startProxy(t, cluster)
  const psql = (options: string, sql: string) =>
    runClient(
      'psql',
      [
        '-X',
        '-At',
        '-v',
        'ON_ERROR_STOP=1',
        '-h',
        '127.0.0.1',
        '-p',
        String(proxy.port),
        '-U',
        'app',
        '-d',
        cluster.database,
        '-c',
        sql,
      ],
      {
        env: { PGOPTIONS: options },
      },
    )
  const refused = await psql('-ecrole=postgres', 'select 1')
  t.equal(refused.code, 2, `psql could not connect (${refused.out})`)
  t.match(
    refused.stderr,
    /FATAL: {2}pg-vault-proxy refuses the options connection parameter: "-ecrole=postgres" sets role/,
  )
  t.notMatch(refused.stderr, /GRANT/, 'no advice to grant postgres')
  const audit = proxy.logs.find((l) => l.msg === 'session ended' && l.refusal === 'options_refused')
  t.equal(audit?.sqlState, '42501', 'the audit line records the refusal')

  const grouped = await psql(
    '-ec statement_timeout=1234',
    "select current_user, current_setting('statement_timeout'), current_setting('datestyle')",
  )
  t.equal(grouped.code, 0, grouped.out)
  t.equal(
    grouped.stdout.trim(),
    'app_owner|1234ms|ISO, DMY',
    '-e (European dates) and -c in one group both reach the server',
  )
})
