import { serialize } from 'pg-protocol'
import { FrontendCode } from '../pgwire/codes.js'
import {
  customSettingNames,
  hasStatementStartingWith,
  mayChangeSessionState,
  prepareStatementFor,
  quoteIdent,
  quoteLiteral,
} from '../pgwire/sql-text.js'

export interface PreparedStatementState {
  name: string
  /** Created by SQL PREPARE (true) or by a protocol-level Parse (false). */
  fromSql: boolean
  /** pg_prepared_statements.statement: the Parse's query, or the whole query string holding the PREPARE. */
  statement: string
  parameterTypes: number[]
}

/** What the upstream said a session holds, at the last probe. */
export interface SessionSnapshot {
  /** Settings changed in the session (SET, set_config), with current values, custom ones included. */
  settings: Array<[string, string]>
  /** current_setting('role'): the owner role unless the client ran SET ROLE. */
  role: string | undefined
  prepared: PreparedStatementState[]
  listen: string[]
  holdableCursors: number
  advisoryLocks: number
  tempRelations: number
}

/** A session that never changed anything: startup parameters and the owner role only. */
export const FRESH_SESSION: SessionSnapshot = {
  settings: [],
  role: undefined,
  prepared: [],
  listen: [],
  holdableCursors: 0,
  advisoryLocks: 0,
  tempRelations: 0,
}

/** Requests that rebuild a session's state on a new upstream connection, and the ReadyForQuery count they earn. */
export interface Replay {
  messages: Buffer
  readyForQueries: number
}

/**
 * What one session may make the proxy keep, in bytes, whatever the client sends (docs/security.md,
 * "Per-session bounds"). Named Parse messages past the first bound are not kept byte for byte (a
 * move re-creates them from the probe's text instead); past the other the session's state can no
 * longer be followed, and the session becomes one that cannot move, logged once, and keeps working.
 */
export const SESSION_BOUNDS = {
  /** Copies of named Parse messages, kept for replay. */
  recordedParseBytes: 1 << 20,
  /** Names of statements whose runs may change state, and names of custom settings used. */
  trackedNameBytes: 64 * 1024,
} as const
/** The state probe's own statement name. */
const PROBE_STATEMENT = 'pg_vault_proxy_state_probe'

/**
 * Follows one client session's state well enough to rebuild it on another upstream connection
 * (docs/rotation.md). Client messages that may change state mark it `dirty`; the session then
 * probes the upstream at the next idle point (as pgbouncer resets a server only when it is idle), and the probe's answer, not this
 * class's guesses, is what gets replayed. Named Parse messages are recorded as sent, so they are
 * re-prepared byte for byte.
 */
export class SessionState {
  snapshot: SessionSnapshot = FRESH_SESSION
  /** Something since the last probe may have changed the session's state. */
  dirty = false
  /** The last probe failed: the session's state is not known, so it must not move. */
  unknown = false
  /** Why the session's state outgrew what the proxy follows (SESSION_BOUNDS): it can never move. */
  exceeded: string | undefined
  private recordedParseBytes = 0
  private trackedNameBytes = 0
  // The collections below are made on first use: most sessions never fill them, and an empty Map
  // or Set still costs a hash table per idle client.
  private parses: Map<string, Buffer> | undefined
  /** Dotted settings the client may have set: PostgreSQL lists them nowhere, so they are asked for by name. */
  private customSettings: Set<string> | undefined
  /**
   * The client's unnamed statement (the last unnamed Parse), which PostgreSQL keeps until the next
   * unnamed Parse or simple Query: clients that Parse+Describe in one round trip and Bind+Execute in
   * the next rely on it across an idle point.
   */
  private unnamedParse: Buffer | undefined
  /** Named statements whose query may change state (a set_config with parameters): each run of one does. */
  private stateChanging: Set<string> | undefined

  /** A client message the relay inspected (Query, Parse, Close), header included. */
  onClientMessage(code: number, message: Buffer): void {
    switch (code) {
      case FrontendCode.Query:
        this.unnamedParse = undefined
        this.onSql(cstringAt(message, 5).value)
        break
      case FrontendCode.Parse: {
        const name = cstringAt(message, 5)
        const query = cstringAt(message, name.end)
        if (name.value !== '') {
          // Copied: the chunk it came in belongs to the relay.
          this.recordParse(name.value, message)
          this.dirty = true
          if (mayChangeSessionState(query.value)) this.stateChanging = this.trackName(this.stateChanging, name.value)
          else this.stateChanging?.delete(name.value)
        } else {
          this.unnamedParse = Buffer.from(message)
        }
        this.onSql(query.value)
        break
      }
      case FrontendCode.Close:
        if (message[5] === 0x53 /* S */) {
          const name = cstringAt(message, 6).value
          this.forgetParse(name)
          this.stateChanging?.delete(name)
          if (name === '') this.unnamedParse = undefined
          // The snapshot still lists the statement: without a new probe a reconnect would re-create it.
          if (name !== '') this.dirty = true
        }
        break
    }
  }

  /**
   * A Bind (seen by header only: Binds are the hot path of prepared workloads). Running a named
   * statement that may change state, such as `select set_config('app.user', $1, false)`, does.
   */
  onBind(): void {
    if (this.stateChanging?.size) this.dirty = true
  }

  /** A Query or Parse too long to inspect: assume the worst. */
  onUninspected(): void {
    this.dirty = true
    // It may have replaced the unnamed statement: better none than a stale one after a move.
    this.unnamedParse = undefined
  }

  private onSql(sql: string): void {
    // EXECUTE of a SQL prepared statement may run anything it was prepared with.
    const executes = this.snapshot.prepared.some((p) => p.fromSql) && hasStatementStartingWith(sql, 'execute')
    if (!executes && !mayChangeSessionState(sql)) return
    this.dirty = true
    for (const name of customSettingNames(sql)) this.customSettings = this.trackName(this.customSettings, name)
  }

  /** A named Parse, copied (the chunk it came in belongs to the relay) while within its bound. */
  private recordParse(name: string, message: Buffer): void {
    this.forgetParse(name)
    if (this.recordedParseBytes + message.length > SESSION_BOUNDS.recordedParseBytes) return
    ;(this.parses ??= new Map()).set(name, Buffer.from(message))
    this.recordedParseBytes += message.length
  }

  private forgetParse(name: string): void {
    const kept = this.parses?.get(name)
    if (!kept) return
    this.recordedParseBytes -= kept.length
    this.parses?.delete(name)
  }

  /**
   * Adds a name to a set the probe or the relay relies on, while the session's names stay within
   * bound; returns the set, made if there was none yet.
   */
  private trackName(set: Set<string> | undefined, name: string): Set<string> | undefined {
    if (set?.has(name) || this.exceeded) return set
    if (this.trackedNameBytes + name.length > SESSION_BOUNDS.trackedNameBytes) {
      this.exceeded = `more prepared-statement and setting names than pg-vault-proxy follows (${SESSION_BOUNDS.trackedNameBytes} bytes)`
      return set
    }
    this.trackedNameBytes += name.length
    return (set ?? new Set()).add(name)
  }

  /**
   * One query that reports everything the session holds, as one row: JSON, converted to UTF-8 and
   * base64-encoded, so whatever client_encoding the session uses cannot mangle it. Every name is
   * schema-qualified: the client's search_path must not be able to shadow a catalog.
   */
  probeQuery(): string {
    const custom = [...(this.customSettings ?? [])]
      .map(
        (name) =>
          `pg_catalog.json_build_array(${quoteLiteral(name)}, pg_catalog.current_setting(${quoteLiteral(name)}, true))`,
      )
      .join(', ')
    const eq = 'OPERATOR(pg_catalog.=)'
    const json = `pg_catalog.json_build_object(
 'settings', (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(s.name, pg_catalog.current_setting(s.name))), '[]') from pg_catalog.pg_settings s where s.source ${eq} 'session'),
 'custom', pg_catalog.json_build_array(${custom}),
 'role', pg_catalog.current_setting('role'),
 'prepared', (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_object('name', p.name, 'fromSql', p.from_sql, 'statement', p.statement, 'parameterTypes', p.parameter_types::pg_catalog.oid[])), '[]') from pg_catalog.pg_prepared_statements p where p.name OPERATOR(pg_catalog.<>) '${PROBE_STATEMENT}'),
 'holdableCursors', (select pg_catalog.count(*) from pg_catalog.pg_cursors c where c.is_holdable),
 'listen', (select coalesce(pg_catalog.json_agg(l.c), '[]') from pg_catalog.pg_listening_channels() l(c)),
 'advisoryLocks', (select pg_catalog.count(*) from pg_catalog.pg_locks k where k.locktype ${eq} 'advisory' and k.pid ${eq} pg_catalog.pg_backend_pid()),
 'tempRelations', (select pg_catalog.count(*) from pg_catalog.pg_class r where r.relnamespace ${eq} pg_catalog.pg_my_temp_schema()))`
    return `select pg_catalog.encode(pg_catalog.convert_to(${json}::pg_catalog.text, 'UTF8'), 'base64')`
  }

  /**
   * The probe as extended-protocol messages under a statement name of its own: a simple Query
   * would destroy the client's unnamed statement. Earns one ReadyForQuery.
   */
  probeMessages(): Buffer {
    return Buffer.concat([
      serialize.parse({ name: PROBE_STATEMENT, text: this.probeQuery(), types: [] }),
      serialize.bind({ statement: PROBE_STATEMENT }),
      serialize.execute(),
      serialize.close({ type: 'S', name: PROBE_STATEMENT }),
      serialize.sync(),
    ])
  }

  /** The probe's one value, as it came back (base64 of UTF-8 JSON). */
  acceptProbeResult(encoded: string): SessionSnapshot {
    return this.acceptProbe(Buffer.from(encoded, 'base64').toString('utf8'))
  }

  /** Takes the probe's answer as the truth, and forgets recorded Parses the server no longer has. */
  acceptProbe(json: string): SessionSnapshot {
    const raw = JSON.parse(json) as {
      settings: Array<[string, string]>
      custom: Array<[string, string | null]>
      role: string
      prepared: Array<{ name: string; fromSql: boolean; statement: string; parameterTypes: Array<string | number> }>
      listen: string[]
      holdableCursors: number
      advisoryLocks: number
      tempRelations: number
    }
    const settings = raw.settings.filter(([name]) => !this.customSettings?.has(name))
    // NULL: the setting does not exist (never set). '' is a value like any other.
    for (const [name, value] of raw.custom) if (value !== null) settings.push([name, value])
    const prepared = raw.prepared.map((p) => ({ ...p, parameterTypes: p.parameterTypes.map(Number) }))
    const protocolNames = new Set(prepared.filter((p) => !p.fromSql).map((p) => p.name))
    for (const name of [...(this.parses?.keys() ?? [])]) if (!protocolNames.has(name)) this.forgetParse(name)
    this.snapshot = {
      settings,
      role: raw.role,
      prepared,
      listen: raw.listen,
      holdableCursors: Number(raw.holdableCursors),
      advisoryLocks: Number(raw.advisoryLocks),
      tempRelations: Number(raw.tempRelations),
    }
    this.dirty = false
    this.unknown = this.exceeded !== undefined
    return this.snapshot
  }

  /** The probe failed: the state is not known until a probe succeeds (the session retries it). */
  markUnknown(): void {
    this.unknown = true
  }

  /** Why `snapshot` cannot move to another connection, in words for the client; undefined if it can. */
  static unmovable(snapshot: SessionSnapshot): string | undefined {
    const reasons: string[] = []
    if (snapshot.tempRelations > 0) reasons.push('temporary tables')
    if (snapshot.holdableCursors > 0) reasons.push('WITH HOLD cursors')
    if (snapshot.advisoryLocks > 0) reasons.push('session advisory locks')
    for (const p of snapshot.prepared) {
      if (p.fromSql && prepareStatementFor(p.statement, p.name) === undefined)
        reasons.push(`the SQL prepared statement "${p.name}" (its PREPARE cannot be told apart in its query string)`)
    }
    return reasons.length > 0 ? reasons.join(', ') : undefined
  }

  /**
   * The requests that rebuild `snapshot` on a new connection logged in with the same startup
   * parameters and owner role: settings first (search_path shapes what PREPARE resolves), then SQL
   * prepared statements, LISTENs and the protocol-level statements, the unnamed one last (any
   * simple Query would destroy it). What the proxy writes itself is UTF-8, so for a client using
   * another client_encoding the replay switches to UTF8 and back; the client's recorded Parse
   * messages are sent once its own encoding is back. Call only when movable.
   */
  replay(snapshot: SessionSnapshot, ownerRole: string, clientEncoding = 'UTF8'): Replay {
    const parts: Buffer[] = []
    let readyForQueries = 0
    const query = (sql: string): void => {
      parts.push(serialize.query(sql))
      readyForQueries++
    }
    const sync = (): void => {
      parts.push(serialize.sync())
      readyForQueries++
    }
    const wrapped = !/^utf-?8$/i.test(clientEncoding)
    if (wrapped) query("select pg_catalog.set_config('client_encoding', 'UTF8', false)")
    const encodingSet = snapshot.settings.some(([name]) => name === 'client_encoding')
    const settings = snapshot.settings
      .filter(([name]) => name !== 'client_encoding')
      .map(([name, value]) => `pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`)
    // Role last: a SET ROLE the client made may take away the right to change the others.
    if (snapshot.role !== undefined && snapshot.role !== ownerRole)
      settings.push(`pg_catalog.set_config('role', ${quoteLiteral(snapshot.role)}, false)`)
    if (settings.length > 0) query(`select ${settings.join(', ')}`)
    for (const p of snapshot.prepared) {
      if (p.fromSql) query(prepareStatementFor(p.statement, p.name) as string)
    }
    if (snapshot.listen.length > 0) query(snapshot.listen.map((channel) => `LISTEN ${quoteIdent(channel)}`).join('; '))
    const parses = snapshot.prepared.filter((p) => !p.fromSql)
    const recorded: Buffer[] = []
    const rebuilt: Buffer[] = []
    const inOrder: Buffer[] = []
    for (const p of parses) {
      const bytes = this.parses?.get(p.name)
      const message =
        bytes && cstringAt(bytes, cstringAt(bytes, 5).end).value === p.statement
          ? bytes
          : serialize.parse({ name: p.name, text: p.statement, types: p.parameterTypes })
      ;(message === bytes ? recorded : rebuilt).push(message)
      inOrder.push(message)
    }
    if (wrapped) {
      // Statements rebuilt from the probe's (UTF-8) text are parsed while the connection speaks UTF-8.
      if (rebuilt.length > 0) {
        parts.push(...rebuilt)
        sync()
      }
      query(`select pg_catalog.set_config('client_encoding', ${quoteLiteral(clientEncoding)}, false)`)
    } else {
      if (encodingSet) query(`select pg_catalog.set_config('client_encoding', ${quoteLiteral(clientEncoding)}, false)`)
      recorded.splice(0, recorded.length, ...inOrder)
    }
    if (this.unnamedParse) recorded.push(this.unnamedParse)
    if (recorded.length > 0) {
      parts.push(...recorded)
      sync()
    }
    return { messages: Buffer.concat(parts), readyForQueries }
  }
}

function cstringAt(buf: Buffer, offset: number): { value: string; end: number } {
  const end = buf.indexOf(0, offset)
  const stop = end < 0 ? buf.length : end
  return { value: buf.toString('utf8', offset, stop), end: stop + 1 }
}
