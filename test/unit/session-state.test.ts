import { serialize } from 'pg-protocol'
import t from 'tap'
import {
  FRESH_SESSION,
  SESSION_BOUNDS,
  SessionState,
  type PreparedStatementState,
  type SessionSnapshot,
} from '../../src/proxy/session-state.js'
import { quoteLiteral } from '../../src/pgwire/sql-text.js'
import { parseMessages } from '../support/wire-builder.js'

const OWNER = 'app_owner'

function send(state: SessionState, ...messages: Buffer[]): void {
  for (const message of messages) state.onClientMessage(message[0] as number, message)
}
const query = (sql: string): Buffer => serialize.query(sql)
const parse = (name: string, text: string, types: number[] = []): Buffer => serialize.parse({ name, text, types })
const closeStatement = (name: string): Buffer => serialize.close({ type: 'S', name })

/** A probe answer in the shape probeQuery() builds; pg_prepared_statements' oids arrive as strings. */
interface ProbeRow {
  settings: Array<[string, string]>
  custom: Array<[string, string | null]>
  role: string
  prepared: Array<{ name: string; fromSql: boolean; statement: string; parameterTypes: Array<string | number> }>
  holdableCursors: number
  listen: string[]
  advisoryLocks: number
  tempRelations: number
}
function probe(row: Partial<ProbeRow> = {}): string {
  const fresh: ProbeRow = {
    settings: [],
    custom: [],
    role: OWNER,
    prepared: [],
    holdableCursors: 0,
    listen: [],
    advisoryLocks: 0,
    tempRelations: 0,
  }
  return JSON.stringify({ ...fresh, ...row })
}
const byParse = (name: string, statement: string, parameterTypes: string[] = []): ProbeRow['prepared'][number] => ({
  name,
  fromSql: false,
  statement,
  parameterTypes,
})
const bySql = (name: string, statement: string, parameterTypes: number[] = []): PreparedStatementState => ({
  name,
  fromSql: true,
  statement,
  parameterTypes,
})

/** The replay's frontend messages as a test reads them back; throws on anything malformed. */
type Sent =
  { type: 'Q'; sql: string } | { type: 'P'; name: string; text: string; types: number[]; raw: Buffer } | { type: 'S' }
function sent(messages: Buffer): Sent[] {
  const all = parseMessages(messages)
  const framed = all.reduce((n, m) => n + 5 + m.body.length, 0)
  if (framed !== messages.length) throw new Error(`the replay has ${messages.length - framed} bytes outside messages`)
  return all.map(({ type, body }): Sent => {
    if (type === 'Q') {
      if (body.indexOf(0) !== body.length - 1) throw new Error('a Query has one NUL, at its end')
      return { type, sql: body.toString('utf8', 0, body.length - 1) }
    }
    if (type === 'P') {
      const nameEnd = body.indexOf(0)
      const textEnd = body.indexOf(0, nameEnd + 1)
      const count = body.readInt16BE(textEnd + 1)
      const types = Array.from({ length: count }, (_, i) => body.readUInt32BE(textEnd + 3 + 4 * i))
      if (textEnd + 3 + 4 * count !== body.length) throw new Error('a Parse has nothing after its types')
      const head = Buffer.alloc(5)
      head.write('P', 0, 'latin1')
      head.writeUInt32BE(body.length + 4, 1)
      return {
        type,
        name: body.toString('utf8', 0, nameEnd),
        text: body.toString('utf8', nameEnd + 1, textEnd),
        types,
        raw: Buffer.concat([head, body]),
      }
    }
    if (type === 'S' && body.length === 0) return { type }
    throw new Error(`unexpected message ${type} in a replay`)
  })
}

const snapshot = (fields: Partial<SessionSnapshot>): SessionSnapshot => ({ ...FRESH_SESSION, ...fields })

void t.test('quoteLiteral: an escape string, right whatever standard_conforming_strings says', async (t) => {
  t.equal(quoteLiteral('plain'), "E'plain'")
  t.equal(quoteLiteral("it's"), "E'it''s'")
  t.equal(quoteLiteral('a\\b'), "E'a\\\\b'")
  t.equal(quoteLiteral("\\'"), "E'\\\\'''")
  t.equal(quoteLiteral(''), "E''")
})

void t.test('Query: SQL that may change state marks the session dirty; the hot path does not', async (t) => {
  const state = new SessionState()
  t.notOk(state.dirty)
  send(
    state,
    query('BEGIN'),
    query('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1'),
    query('SELECT abalance FROM pgbench_accounts WHERE aid = 1'),
    query('INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP)'),
    query('END'),
  )
  t.notOk(state.dirty, 'pgbench leaves it clean')
  send(state, query("SET app.tenant = 'x'"))
  t.ok(state.dirty)

  const other = new SessionState()
  other.onUninspected()
  t.ok(other.dirty, 'a message too long to read is assumed to change state')
})

void t.test(
  'Parse: a named statement marks the session dirty; an unnamed one only for state-changing SQL',
  async (t) => {
    const state = new SessionState()
    send(state, parse('', 'select * from t where id = $1', [23]))
    t.notOk(state.dirty, 'unnamed, plain SQL')
    send(state, parse('s1', 'select * from t where id = $1', [23]))
    t.ok(state.dirty, 'named: it outlives its transaction')

    const unnamed = new SessionState()
    send(unnamed, parse('', "select pg_catalog.set_config('app.user_id', $1, false)", [25]))
    t.ok(unnamed.dirty, 'unnamed, but its SQL sets something')
  },
)

void t.test('probeQuery asks for the custom settings named in Query and Parse SQL', async (t) => {
  const state = new SessionState()
  t.match(state.probeQuery(), /'custom', pg_catalog\.json_build_array\(\),/, 'none yet')
  send(
    state,
    query('SET app.tenant = \'x\'; set session "My".Setting to 1'),
    parse('', "select pg_catalog.set_config('app.user_id', $1, false)"),
    query(`SET "it's".odd = 1`),
    query('SET search_path = a'),
    query('UPDATE t SET a.b = 1'),
  )
  const sql = state.probeQuery()
  for (const name of ['app.tenant', 'My.setting', 'app.user_id'])
    t.ok(sql.includes(`pg_catalog.json_build_array(E'${name}', pg_catalog.current_setting(E'${name}', true))`), name)
  t.ok(
    sql.includes(`pg_catalog.json_build_array(E'it''s.odd', pg_catalog.current_setting(E'it''s.odd', true))`),
    'quotes in names escaped',
  )
  t.notOk(sql.includes(`E'search_path'`), 'built-in settings come from pg_settings')
  t.notOk(sql.includes(`E'a.b'`), 'not from SQL that cannot change state')
  for (const key of [
    'settings',
    'custom',
    'role',
    'prepared',
    'holdableCursors',
    'listen',
    'advisoryLocks',
    'tempRelations',
  ])
    t.ok(sql.includes(`'${key}', `), key)
})

void t.test('acceptProbe: custom values join the settings (empty ones too); unset ones are left out', async (t) => {
  const state = new SessionState()
  send(state, query("SET app.tenant = 't1'; SET app.cleared = 'x'; SET app.never = 'y'"))
  state.markUnknown()
  t.ok(state.unknown)
  const snap = state.acceptProbe(
    probe({
      // An extension-defined custom setting shows in pg_settings too: it must not be replayed twice.
      settings: [
        ['search_path', '"a b", public'],
        ['app.tenant', 'stale'],
      ],
      custom: [
        ['app.tenant', 't1'],
        ['app.cleared', ''],
        ['app.never', null],
      ],
      role: 'reporting',
      prepared: [byParse('s1', 'select $1', ['23', '25'])],
      listen: ['jobs'],
      holdableCursors: 1,
      advisoryLocks: 2,
      tempRelations: 3,
    }),
  )
  t.equal(snap, state.snapshot)
  t.same(snap, {
    settings: [
      ['search_path', '"a b", public'],
      ['app.tenant', 't1'],
      // '' is a value (the setting exists); NULL means it was never set.
      ['app.cleared', ''],
    ],
    role: 'reporting',
    prepared: [{ name: 's1', fromSql: false, statement: 'select $1', parameterTypes: [23, 25] }],
    listen: ['jobs'],
    holdableCursors: 1,
    advisoryLocks: 2,
    tempRelations: 3,
  })
  t.strictSame(snap.prepared[0]?.parameterTypes, [23, 25], 'oids as numbers')
  t.notOk(state.dirty)
  t.notOk(state.unknown)
})

void t.test('acceptProbe clears dirty; markUnknown keeps it (the probe is retried) and marks unknown', async (t) => {
  const state = new SessionState()
  send(state, query('LISTEN ch'))
  t.ok(state.dirty)
  state.markUnknown()
  t.ok(state.dirty, 'still dirty: the session probes again')
  t.ok(state.unknown)
  send(state, query('UNLISTEN ch'))
  state.acceptProbe(probe())
  t.notOk(state.dirty)
  t.notOk(state.unknown)
})

void t.test('unmovable: what cannot be rebuilt on another connection', async (t) => {
  t.equal(SessionState.unmovable(FRESH_SESSION), undefined)
  t.equal(
    SessionState.unmovable(snapshot({ tempRelations: 1, holdableCursors: 2, advisoryLocks: 3 })),
    'temporary tables, WITH HOLD cursors, session advisory locks',
  )
  t.equal(SessionState.unmovable(snapshot({ advisoryLocks: 1 })), 'session advisory locks')
  t.equal(
    SessionState.unmovable(
      snapshot({ prepared: [bySql('p', 'prepare p as select 1; deallocate p; prepare p as select 2')] }),
    ),
    'the SQL prepared statement "p" (its PREPARE cannot be told apart in its query string)',
  )
  t.equal(
    SessionState.unmovable(
      snapshot({
        prepared: [
          bySql('p2', 'select 1; prepare p2 as select 2; set x=1'),
          { name: 's1', fromSql: false, statement: 'anything; at all', parameterTypes: [] },
        ],
        listen: ['ch'],
        settings: [['search_path', 'a']],
        role: 'other',
      }),
    ),
    undefined,
    'settings, role, extractable PREPAREs, Parses and LISTENs all move',
  )
})

void t.test('replay of a fresh session is nothing at all', async (t) => {
  const state = new SessionState()
  const fresh = state.replay(FRESH_SESSION, OWNER)
  t.equal(fresh.messages.length, 0)
  t.equal(fresh.readyForQueries, 0)
  const probed = state.replay(state.acceptProbe(probe()), OWNER)
  t.equal(probed.messages.length, 0, 'role equal to the owner role is not set')
  t.equal(probed.readyForQueries, 0)
})

void t.test('replay: settings with escaped values, the role last and only when not the owner', async (t) => {
  const state = new SessionState()
  const settings: Array<[string, string]> = [
    ['search_path', '"a b", public'],
    ['app.tenant', "it's \\ x"],
  ]
  const withRole = state.replay(snapshot({ settings, role: 'reporting' }), OWNER)
  t.same(sent(withRole.messages), [
    {
      type: 'Q',
      sql: `select pg_catalog.set_config(E'search_path', E'"a b", public', false), pg_catalog.set_config(E'app.tenant', E'it''s \\\\ x', false), pg_catalog.set_config('role', E'reporting', false)`,
    },
  ])
  t.equal(withRole.readyForQueries, 1)

  const asOwner = state.replay(snapshot({ settings, role: OWNER }), OWNER)
  t.same(sent(asOwner.messages), [
    {
      type: 'Q',
      sql: `select pg_catalog.set_config(E'search_path', E'"a b", public', false), pg_catalog.set_config(E'app.tenant', E'it''s \\\\ x', false)`,
    },
  ])

  const roleOnly = state.replay(snapshot({ role: "O'Brien\\" }), OWNER)
  t.same(sent(roleOnly.messages), [{ type: 'Q', sql: `select pg_catalog.set_config('role', E'O''Brien\\\\', false)` }])
  t.equal(roleOnly.readyForQueries, 1)
})

void t.test('replay: SQL PREPAREs from their query strings, then LISTENs with quoted names', async (t) => {
  const state = new SessionState()
  const replay = state.replay(
    snapshot({
      prepared: [
        bySql('p2', 'select 1; prepare p2 as select 2; set x=1'),
        bySql('Mixed', '/* c */ PREPARE "Mixed" (int) AS SELECT $1;', [23]),
      ],
      listen: ['jobs', 'We"ird; drop table t'],
    }),
    OWNER,
  )
  t.same(sent(replay.messages), [
    { type: 'Q', sql: 'prepare p2 as select 2' },
    { type: 'Q', sql: 'PREPARE "Mixed" (int) AS SELECT $1' },
    { type: 'Q', sql: 'LISTEN "jobs"; LISTEN "We""ird; drop table t"' },
  ])
  t.equal(replay.readyForQueries, 3)
})

void t.test('replay: recorded Parse messages are reused byte for byte', async (t) => {
  const state = new SessionState()
  // Type 0 (unspecified) as the client sent it; the server reports the type it chose.
  const s1 = parse('s1', 'select $1', [0])
  const s2 = parse('s2', 'select $1::int, $2', [23, 0])
  const recorded = [Buffer.from(s1), Buffer.from(s2)]
  send(state, s1, s2)
  // The relay owns the chunk: it may be reused for other bytes once onClientMessage returns.
  s1.fill(0x58)
  s2.fill(0x58)
  const snap = state.acceptProbe(
    probe({ prepared: [byParse('s1', 'select $1', ['25']), byParse('s2', 'select $1::int, $2', ['23', '25'])] }),
  )
  const replay = state.replay(snap, OWNER)
  const messages = sent(replay.messages)
  t.same(
    messages.map((m) => m.type),
    ['P', 'P', 'S'],
  )
  t.ok(replay.messages.subarray(0, recorded[0]!.length).equals(recorded[0]!), 's1 as recorded')
  t.ok(
    replay.messages.subarray(recorded[0]!.length, recorded[0]!.length + recorded[1]!.length).equals(recorded[1]!),
    's2 as recorded',
  )
  t.equal(replay.readyForQueries, 1, 'one Sync for all Parses')
})

void t.test('replay: a Parse is rebuilt from statement text and types when not recorded as such', async (t) => {
  const state = new SessionState()
  // s1's second Parse failed (the name was taken), so the server still has the first text.
  send(state, parse('s1', 'select $1', [0]), parse('s1', 'select broken(', [0]))
  const snap = state.acceptProbe(
    probe({
      prepared: [byParse('s1', 'select $1', ['25']), byParse('s3', 'select $1 + $2', ['23', '20'])],
    }),
  )
  const replay = state.replay(snap, OWNER)
  const messages = sent(replay.messages)
  t.match(messages, [
    { type: 'P', name: 's1', text: 'select $1', types: [25] },
    { type: 'P', name: 's3', text: 'select $1 + $2', types: [23, 20] },
    { type: 'S' },
  ])
  const [first] = messages
  t.ok(
    first?.type === 'P' && first.raw.equals(serialize.parse({ name: 's1', text: 'select $1', types: [25] })),
    'a well-formed Parse',
  )
  t.equal(replay.readyForQueries, 1)
})

void t.test(
  'replay: everything together, in order, with one ReadyForQuery per Query and one for the Sync',
  async (t) => {
    const state = new SessionState()
    send(state, query("SET app.tenant = 'acme'"), parse('s1', 'select $1', [0]))
    const snap = state.acceptProbe(
      probe({
        settings: [['search_path', 'app']],
        custom: [['app.tenant', 'acme']],
        role: 'reporting',
        prepared: [
          byParse('s1', 'select $1', ['25']),
          { name: 'a', fromSql: true, statement: 'prepare a as select 1; prepare b as select 2', parameterTypes: [] },
          byParse('s2', 'select 2'),
          { name: 'b', fromSql: true, statement: 'prepare a as select 1; prepare b as select 2', parameterTypes: [] },
        ],
        listen: ['ch'],
      }),
    )
    t.equal(SessionState.unmovable(snap), undefined)
    const replay = state.replay(snap, OWNER)
    t.match(sent(replay.messages), [
      {
        type: 'Q',
        sql: `select pg_catalog.set_config(E'search_path', E'app', false), pg_catalog.set_config(E'app.tenant', E'acme', false), pg_catalog.set_config('role', E'reporting', false)`,
      },
      { type: 'Q', sql: 'prepare a as select 1' },
      { type: 'Q', sql: 'prepare b as select 2' },
      { type: 'Q', sql: 'LISTEN "ch"' },
      { type: 'P', name: 's1', text: 'select $1', types: [0] },
      { type: 'P', name: 's2', text: 'select 2', types: [] },
      { type: 'S' },
    ])
    t.equal(sent(replay.messages).length, 7)
    t.equal(replay.readyForQueries, 5)
  },
)

void t.test('acceptProbe forgets recorded Parses the server no longer lists', async (t) => {
  const state = new SessionState()
  send(state, parse('gone', 'select $1', [0]), parse('kept', 'select $1', [0]), parse('now_sql', 'select $1', [0]))
  // DEALLOCATE gone (say), and now_sql was re-created by a SQL PREPARE.
  state.acceptProbe(
    probe({
      prepared: [
        byParse('kept', 'select $1', ['25']),
        { name: 'now_sql', fromSql: true, statement: 'prepare now_sql as select $1', parameterTypes: ['25'] },
      ],
    }),
  )
  // Should the names come back as protocol statements, the old bytes must not be used for them.
  const snap = state.acceptProbe(
    probe({
      prepared: [
        byParse('gone', 'select $1', ['25']),
        byParse('kept', 'select $1', ['25']),
        byParse('now_sql', 'select $1', ['25']),
      ],
    }),
  )
  t.match(sent(state.replay(snap, OWNER).messages), [
    { type: 'P', name: 'gone', types: [25] },
    { type: 'P', name: 'kept', types: [0] },
    { type: 'P', name: 'now_sql', types: [25] },
    { type: 'S' },
  ])
})

void t.test('Close of a statement forgets its recorded Parse and marks the session dirty', async (t) => {
  const state = new SessionState()
  send(state, parse('s1', 'select $1', [0]))
  const listed = probe({ prepared: [byParse('s1', 'select $1', ['25'])] })
  state.acceptProbe(listed)
  send(state, serialize.close({ type: 'P', name: 's1' }), closeStatement(''))
  t.notOk(state.dirty, 'closing a portal or the unnamed statement changes nothing that moves')
  t.match(sent(state.replay(state.snapshot, OWNER).messages), [{ type: 'P', name: 's1', types: [0] }, { type: 'S' }])

  send(state, closeStatement('s1'))
  t.ok(state.dirty, 'the snapshot still lists s1: it must be probed again before a reconnect')
  // A Close after an error in the same batch is skipped, so the server may still have it.
  const snap = state.acceptProbe(listed)
  t.match(sent(state.replay(snap, OWNER).messages), [{ type: 'P', name: 's1', types: [25] }, { type: 'S' }])
  state.acceptProbe(probe())
  t.equal(state.replay(state.snapshot, OWNER).messages.length, 0)
})

void t.test(
  'named Parses are kept up to SESSION_BOUNDS.recordedParseBytes; past it they are rebuilt from the probe',
  async (t) => {
    const state = new SessionState()
    const name = (i: number): string => `s${String(i).padStart(6, '0')}`
    const size = parse(name(0), 'select $1', [0]).length
    const fit = Math.floor(SESSION_BOUNDS.recordedParseBytes / size)
    for (let i = 0; i <= fit; i++) send(state, parse(name(i), 'select $1', [0]))
    // Re-parsing a kept name replaces its copy (the bytes it held are given back first).
    send(state, parse(name(0), 'select $1::text', [0]))
    const snap = state.acceptProbe(
      probe({
        prepared: [
          byParse(name(0), 'select $1::text', ['25']),
          byParse(name(fit - 1), 'select $1', ['25']),
          byParse(name(fit), 'select $1', ['25']),
        ],
      }),
    )
    t.match(sent(state.replay(snap, OWNER).messages), [
      { type: 'P', name: name(0), text: 'select $1::text', types: [0] },
      { type: 'P', name: name(fit - 1), types: [0] },
      { type: 'P', name: name(fit), types: [25] },
      { type: 'S' },
    ])
    t.notOk(state.exceeded, 'the session can still move')
  },
)

void t.test(
  'custom setting names past SESSION_BOUNDS.trackedNameBytes: the session cannot move, and keeps no more',
  async (t) => {
    const state = new SessionState()
    const per = 40
    const count = Math.ceil(SESSION_BOUNDS.trackedNameBytes / per) + 10
    for (let i = 0; i < count; i++)
      send(state, query(`set app.${'x'.repeat(per - 10)}${String(i).padStart(6, '0')} = 1`))
    t.match(state.exceeded, /more prepared-statement and setting names/)
    const probeLength = state.probeQuery().length
    for (let i = 0; i < 1000; i++) send(state, query(`set other.name${i} = 1`))
    t.equal(state.probeQuery().length, probeLength, 'names past the bound are not kept: the probe does not grow')
    state.acceptProbe(probe({}))
    t.ok(state.unknown, 'a successful probe does not make it movable again')
  },
)

void t.test('running a named statement that may change state marks the state dirty; others do not', async (t) => {
  const state = new SessionState()
  send(state, parse('plain', 'select $1::int'))
  state.acceptProbe(probe({ prepared: [byParse('plain', 'select $1::int', [])] }))
  state.onBind()
  t.notOk(state.dirty, 'binding an ordinary statement changes nothing')
  send(state, parse('tenant', "select pg_catalog.set_config('app.tenant', $1, false)"))
  state.acceptProbe(
    probe({ prepared: [byParse('tenant', "select pg_catalog.set_config('app.tenant', $1, false)", [])] }),
  )
  t.notOk(state.dirty)
  state.onBind()
  t.ok(state.dirty, 'binding a set_config statement may change a setting')
  send(state, closeStatement('tenant'))
  state.acceptProbe(probe({ prepared: [byParse('plain', 'select $1::int', [])] }))
  state.onBind()
  t.notOk(state.dirty, 'once closed, it no longer counts')
})

void t.test('EXECUTE marks the state dirty only when SQL prepared statements exist', async (t) => {
  const state = new SessionState()
  send(state, query('execute p(1)'))
  t.notOk(state.dirty, 'nothing to execute: no probe')
  state.acceptProbe(
    probe({
      prepared: [
        {
          name: 'p',
          fromSql: true,
          statement: "prepare p(text) as select pg_catalog.set_config('app.x', $1, false)",
          parameterTypes: ['25'],
        },
      ],
    }),
  )
  send(state, query("execute p('y')"))
  t.ok(state.dirty)
})

void t.test('replay: the unnamed statement is re-parsed last, after every simple Query', async (t) => {
  const state = new SessionState()
  const unnamed = parse('', 'select $1::int', [23])
  send(state, query('LISTEN jobs'), unnamed)
  state.acceptProbe(probe({ listen: ['jobs'] }))
  const replay = state.replay(state.snapshot, OWNER)
  const messages = sent(replay.messages)
  t.same(
    messages.map((m) => m.type),
    ['Q', 'P', 'S'],
  )
  t.same(messages[1]?.type === 'P' ? messages[1].raw : undefined, unnamed, 'the client bytes, as sent')
  t.equal(replay.readyForQueries, 2)
  send(state, query('select 1'))
  t.same(
    sent(state.replay(state.snapshot, OWNER).messages).map((m) => m.type),
    ['Q'],
    'a simple Query destroyed it (as it does on the server)',
  )
  send(state, unnamed, closeStatement(''))
  t.same(
    sent(state.replay(state.snapshot, OWNER).messages).map((m) => m.type),
    ['Q'],
    'so does Close',
  )
})

void t.test(
  'replay for a LATIN1 client: UTF-8 while the proxy speaks, the client encoding for its own bytes',
  async (t) => {
    const state = new SessionState()
    const recorded = parse('mine', 'select 1')
    send(state, recorded)
    state.acceptProbe(
      probe({
        settings: [['search_path', 'app']],
        prepared: [byParse('mine', 'select 1'), byParse('rebuilt', 'select 2')],
      }),
    )
    const messages = sent(state.replay(state.snapshot, OWNER, 'LATIN1').messages)
    t.same(
      messages.map((m) => (m.type === 'Q' ? m.sql : m.type === 'P' ? `P ${m.name}` : m.type)),
      [
        "select pg_catalog.set_config('client_encoding', 'UTF8', false)",
        "select pg_catalog.set_config(E'search_path', E'app', false)",
        'P rebuilt',
        'S',
        "select pg_catalog.set_config('client_encoding', E'LATIN1', false)",
        'P mine',
        'S',
      ],
    )
  },
)

void t.test('the probe is sent under a statement name of its own, never as a simple Query', async (t) => {
  const messages = parseMessages(new SessionState().probeMessages())
  t.same(
    messages.map((m) => m.type),
    ['P', 'B', 'E', 'C', 'S'],
    'Parse, Bind, Execute, Close, Sync: one ReadyForQuery',
  )
  const name = messages[0]?.body.toString('utf8', 0, messages[0].body.indexOf(0))
  t.ok(name, 'a named statement: the unnamed one is left alone')
  t.equal(messages[3]?.body.toString('utf8', 1, messages[3].body.length - 1), name, 'and it is closed again')
  t.match(
    messages[0]?.body.toString(),
    /pg_catalog\.encode\(pg_catalog\.convert_to\(/,
    'the answer comes back as base64 of UTF-8',
  )
})
