import {
  encodeAuthenticationOk,
  encodeBackendKeyData,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/pgwire/backend-messages.js'
import type { TransactionStatus } from '../../src/pgwire/codes.js'
import { FRESH_SESSION, type SessionSnapshot } from '../../src/proxy/session-state.js'
import {
  bindComplete,
  closeComplete,
  commandComplete,
  dataRow,
  errorResponse,
  noData,
  noParameters,
  noticeResponse,
  parseComplete,
  rowDescription,
} from './backend-replies.js'
import { startSpoofUpstream, type SpoofConnection } from './spoof-upstream.js'
import type { WireMessage } from './wire-builder.js'

// A scripted PostgreSQL backend for unit tests of the session code, in the spirit of
// cloud-sql-proxy's fake dialer: an in-process server on a loopback port instead of the real
// database. It logs every client in with trust (AuthenticationOk), greets like PostgreSQL
// (ParameterStatus, BackendKeyData, ReadyForQuery), and answers a handful of statements, the
// proxy's session-state probe and the pool's DISCARD ALL by default; a test's script sees every
// message first and may answer it otherwise (an error, a FATAL, a dropped socket, nothing).

/** The proxy's state probe runs as this prepared statement (src/proxy/session-state.ts, PROBE_STATEMENT). */
export const PROBE_STATEMENT = 'pg_vault_proxy_state_probe'

/**
 * Sees each message a connection receives after startup, before the default answer. Return true
 * when the script answered it (or chose silence); anything else lets the fake answer as usual.
 */
export type FakeScript = (message: WireMessage, connection: FakeConnection) => boolean | void | Promise<boolean | void>

type SqlResult = { columns?: string[]; rows?: Array<Array<string | null>>; tag: string } | { error: [string, string] }

/** One server connection, as the fake sees and drives it. */
export class FakeConnection {
  status: TransactionStatus = 'I'
  /** What the state probe reports beyond a fresh session (settings a SET changed, say). */
  state: Partial<SessionSnapshot> = {}
  private readonly statements = new Map<string, string>()
  private readonly portals = new Map<string, string>()
  /** After an error in an extended-protocol batch, messages are skipped until Sync (as PostgreSQL does). */
  private skipToSync = false

  constructor(
    readonly wire: SpoofConnection,
    readonly processId: number,
  ) {}

  /** The login user the proxy sent: which credential this connection runs on. */
  get user(): string | undefined {
    return this.wire.startupParameters.get('user')
  }

  /** Every message received after startup, in order. */
  get messages(): WireMessage[] {
    return this.wire.messages
  }

  get messageTypes(): string[] {
    return this.wire.messageTypes
  }

  get closed(): boolean {
    return this.wire.closed
  }

  /** How many state probes this connection was asked (and answered or not). */
  get probes(): number {
    return this.messages.filter(isProbe).length
  }

  send(...messages: Buffer[]): void {
    this.wire.write(...messages)
  }

  ready(): void {
    this.send(encodeReadyForQuery(this.status))
  }

  notice(message: string, severity: 'NOTICE' | 'WARNING' = 'NOTICE', sqlState = '00000'): void {
    this.send(noticeResponse(severity, sqlState, message))
  }

  /** A FATAL, then the server process exits (as pg_terminate_backend: 57P01). */
  fatal(sqlState: string, message: string): void {
    this.send(errorResponse('FATAL', sqlState, message))
    this.wire.end()
  }

  /** The connection breaks without a word. */
  drop(): void {
    this.wire.close()
  }

  untilClosed(): Promise<void> {
    return this.wire.untilClosed()
  }

  greet(): void {
    this.send(
      encodeAuthenticationOk(),
      encodeParameterStatus('server_version', '15.0 (fake)'),
      encodeParameterStatus('server_encoding', 'UTF8'),
      encodeParameterStatus('client_encoding', 'UTF8'),
      encodeParameterStatus('DateStyle', 'ISO, MDY'),
      encodeParameterStatus('TimeZone', 'UTC'),
      encodeParameterStatus('integer_datetimes', 'on'),
      encodeParameterStatus('standard_conforming_strings', 'on'),
      encodeParameterStatus('session_authorization', this.user ?? ''),
      encodeBackendKeyData(this.processId, Buffer.from([0, 0, 0, 42])),
      encodeReadyForQuery('I'),
    )
  }

  /** What PostgreSQL would answer to `message`, for the statements the fake knows. */
  answer(message: WireMessage): void {
    const { type, body } = message
    if (type === 'S') {
      this.skipToSync = false
      this.ready()
      return
    }
    if (type === 'Q') {
      this.statements.delete('')
      const result = this.run(cstrings(body)[0] ?? '', '')
      if ('error' in result) this.send(errorResponse('ERROR', ...result.error))
      else this.send(...(result.columns ? [rowDescription(result.columns)] : []), ...this.rowsOf(result))
      this.ready()
      return
    }
    if (this.skipToSync || type === 'H') return
    switch (type) {
      case 'P': {
        const [name = '', sql = ''] = cstrings(body)
        this.statements.set(name, sql)
        this.send(parseComplete())
        return
      }
      case 'B': {
        const [portal = '', statement = ''] = cstrings(body)
        this.portals.set(portal, statement)
        this.send(bindComplete())
        return
      }
      case 'D': {
        const name = cstrings(body.subarray(1))[0] ?? ''
        const statement = body[0] === 0x53 ? name : (this.portals.get(name) ?? '')
        const result = this.peek(statement)
        if (body[0] === 0x53) this.send(noParameters())
        this.send('columns' in result && result.columns ? rowDescription(result.columns) : noData())
        return
      }
      case 'E': {
        const statement = this.portals.get(cstrings(body)[0] ?? '') ?? ''
        const result = this.run(this.statements.get(statement) ?? '', statement)
        if ('error' in result) {
          this.send(errorResponse('ERROR', ...result.error))
          this.skipToSync = true
          if (this.status === 'T') this.status = 'E'
        } else this.send(...this.rowsOf(result))
        return
      }
      case 'C': {
        const name = cstrings(body.subarray(1))[0] ?? ''
        if (body[0] === 0x53) this.statements.delete(name)
        else this.portals.delete(name)
        this.send(closeComplete())
        return
      }
    }
  }

  private rowsOf(result: Exclude<SqlResult, { error: [string, string] }>): Buffer[] {
    return [...(result.rows ?? []).map(dataRow), commandComplete(result.tag)]
  }

  /** The result `statement` would have, without running it (for Describe). */
  private peek(statement: string): SqlResult {
    const status = this.status
    const result = this.run(this.statements.get(statement) ?? '', statement)
    this.status = status
    return result
  }

  /** The statements the fake knows; anything else is an error a test will notice. */
  private run(sql: string, statement: string): SqlResult {
    if (statement === PROBE_STATEMENT) {
      // A fresh session (the owner role from the startup packet) with whatever the test set in `state`.
      const role = this.wire.startupParameters.get('role') ?? 'none'
      const snapshot = { ...FRESH_SESSION, role, ...this.state, custom: [] }
      const encoded = Buffer.from(JSON.stringify(snapshot), 'utf8').toString('base64')
      return { columns: ['encode'], rows: [[encoded]], tag: 'SELECT 1' }
    }
    const text = sql.trim().replace(/;$/, '').toLowerCase()
    if (text === 'discard all') return { tag: 'DISCARD ALL' }
    if (text === 'begin') {
      this.status = 'T'
      return { tag: 'BEGIN' }
    }
    if (text === 'commit' || text === 'rollback') {
      this.status = 'I'
      return { tag: text === 'commit' ? 'COMMIT' : 'ROLLBACK' }
    }
    if (text.startsWith('set ')) return { tag: 'SET' }
    // How a move replays settings (SessionState.replay): one set_config per setting, in one SELECT
    // (the values are not echoed: the mover reads only whether it succeeded).
    const replayed = /^select (pg_catalog\.set_config\(.*\))$/.exec(text)
    if (replayed) {
      const calls = (replayed[1] as string).split(/,\s*(?=pg_catalog\.set_config\()/)
      return { columns: calls.map(() => 'set_config'), rows: [calls.map(() => '')], tag: 'SELECT 1' }
    }
    if (text === 'select pg_backend_pid()')
      return { columns: ['pg_backend_pid'], rows: [[String(this.processId)]], tag: 'SELECT 1' }
    if (text === 'select session_user') return { columns: ['session_user'], rows: [[this.user ?? '']], tag: 'SELECT 1' }
    const literal = /^select (\d+)$/.exec(text)
    if (literal) return { columns: ['?column?'], rows: [[literal[1] as string]], tag: 'SELECT 1' }
    return { error: ['0A000', `the fake upstream does not know this statement: ${sql}`] }
  }
}

export interface FakeUpstream {
  port: number
  /** Every connection ever made, in order of arrival. */
  connections: FakeConnection[]
  /** Replaceable at any time; it applies to every connection's next message. */
  script: FakeScript | undefined
  /** Connections not closed yet. */
  readonly open: FakeConnection[]
}

interface Teardown {
  teardown(fn: () => unknown): void
}

/** Starts a fake upstream on a free loopback port (plaintext: it answers SSLRequest with 'N'). */
export async function startFakeUpstream(t: Teardown, script?: FakeScript): Promise<FakeUpstream> {
  const connections: FakeConnection[] = []
  let nextPid = 1001
  const fake: FakeUpstream = {
    port: 0,
    connections,
    script,
    get open() {
      return connections.filter((c) => !c.closed)
    },
  }
  const spoof = await startSpoofUpstream(
    t,
    async (wire) => {
      const connection = new FakeConnection(wire, nextPid++)
      connections.push(connection)
      connection.greet()
      for (;;) {
        const message = await wire.readMessage()
        if (!message) return
        if ((await fake.script?.(message, connection)) === true) continue
        if (message.type === 'X') {
          wire.close()
          return
        }
        connection.answer(message)
      }
    },
    undefined,
  )
  fake.port = spoof.port
  return fake
}

/** The NUL-terminated strings at the start of a message body. */
export function cstrings(body: Buffer): string[] {
  const out: string[] = []
  let offset = 0
  while (offset < body.length) {
    const end = body.indexOf(0, offset)
    if (end < 0) break
    out.push(body.toString('utf8', offset, end))
    offset = end + 1
  }
  return out
}

/** The message is the state probe's Parse. */
export const isProbe = (message: WireMessage): boolean =>
  message.type === 'P' && cstrings(message.body)[0] === PROBE_STATEMENT
