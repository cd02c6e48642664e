import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TLSSocket } from 'node:tls'
import { promisify } from 'node:util'
import { decodeStartupPacket } from '../../src/pgwire/startup-packet.js'
import { BufferList, parseMessages, type WireMessage } from './wire-builder.js'

// A scripted server that pretends to be the upstream PostgreSQL: it answers SSLRequest with 'S' and
// a self-signed certificate made at test time, reads the StartupMessage, then runs a scenario. It
// records every frontend message it receives, so a test can prove what a spoofed server learned.

const SSL_REQUEST_CODE = 80877103
const execFileAsync = promisify(execFile)

interface Teardown {
  teardown(fn: () => unknown): void
}

export interface SpoofTls {
  cert: Buffer
  key: Buffer
}

/**
 * A fresh self-signed certificate that no configured CA has signed: ECDSA P-256 with SHA-256 by
 * default, or Ed25519 (which has no tls-server-end-point hash).
 */
export async function selfSignedCertificate(keyType: 'ecdsa' | 'ed25519' = 'ecdsa'): Promise<SpoofTls> {
  const dir = await mkdtemp(join(tmpdir(), 'pgvp-spoof-'))
  const key =
    keyType === 'ecdsa'
      ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-sha256']
      : ['-newkey', 'ed25519']
  try {
    await execFileAsync('openssl', [
      'req',
      '-x509',
      ...key,
      '-nodes',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
      '-days',
      '2',
      '-subj',
      '/CN=spoofed-postgres',
    ])
    return { cert: await readFile(join(dir, 'cert.pem')), key: await readFile(join(dir, 'key.pem')) }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** One connection to the spoof, as the spoof saw it. */
export class SpoofConnection {
  tls = false
  /** Frontend messages after the StartupMessage, in arrival order. */
  readonly messages: WireMessage[] = []
  /** Bytes the scenario handed to the socket that the socket accepted before it closed. */
  bytesWritten = 0
  closed = false
  /** The StartupMessage's parameters (user, database, role, ...), once the handshake read it. */
  readonly startupParameters = new Map<string, string>()
  private unread: Buffer = Buffer.alloc(0)
  private readonly waiters = new Set<() => void>()

  constructor(private socket: net.Socket) {}

  /** Message types received after startup, e.g. ['p'] for a password or SASL message, ['Q'] for a query. */
  get messageTypes(): string[] {
    return this.messages.map((m) => m.type)
  }

  write(...chunks: Buffer[]): boolean {
    if (this.closed) return false
    const data = Buffer.concat(chunks)
    const ok = this.socket.write(data)
    this.bytesWritten += data.length
    return ok
  }

  /** Writes and waits until the socket can take more (or closed): a sender that honours backpressure. */
  async send(...chunks: Buffer[]): Promise<void> {
    if (this.write(...chunks) || this.closed) return
    await Promise.race([once(this.socket, 'drain'), this.untilClosed()])
  }

  /** The next frontend message after startup; undefined once the peer closed. */
  async readMessage(): Promise<WireMessage | undefined> {
    for (;;) {
      const [message] = parseMessages(this.unread)
      if (message) {
        this.unread = this.unread.subarray(5 + message.body.length)
        this.messages.push(message)
        return message
      }
      if (this.closed) return undefined
      await this.nextEvent()
    }
  }

  async untilClosed(): Promise<void> {
    while (!this.closed) await this.nextEvent()
  }

  close(): void {
    this.socket.destroy()
  }

  /** Closes after what was written is sent (a FIN, as a server process that exits). */
  end(): void {
    this.socket.end()
  }

  /** SSLRequest → 'S' and TLS (or 'N' without a certificate), then the StartupMessage. */
  async handshake(tls: SpoofTls | undefined): Promise<void> {
    this.listen(this.socket)
    let packet = await this.readPacket()
    if (packet.readUInt32BE(4) === SSL_REQUEST_CODE) {
      if (tls) {
        this.socket.write('S')
        this.socket.removeAllListeners('data')
        const secure = new TLSSocket(this.socket, { isServer: true, cert: tls.cert, key: tls.key })
        this.socket = secure
        this.tls = true
        this.listen(secure)
      } else {
        this.socket.write('N')
      }
      packet = await this.readPacket()
    }
    const startup = decodeStartupPacket(packet)
    if (startup.kind !== 'StartupMessage' || startup.majorVersion !== 3) throw new Error('expected a StartupMessage')
    for (const [name, value] of startup.parameters) this.startupParameters.set(name, value)
  }

  private listen(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.unread = this.unread.length === 0 ? chunk : Buffer.concat([this.unread, chunk])
      this.notify()
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      this.closed = true
      this.notify()
    })
  }

  private async readPacket(): Promise<Buffer> {
    for (;;) {
      if (this.unread.length >= 4) {
        const length = this.unread.readUInt32BE(0)
        if (this.unread.length >= length) {
          const packet = this.unread.subarray(0, length)
          this.unread = this.unread.subarray(length)
          return packet
        }
      }
      if (this.closed) throw new Error('closed during the handshake')
      await this.nextEvent()
    }
  }

  /** Resolves at the next data or close event. */
  private nextEvent(): Promise<void> {
    return new Promise<void>((resolve) => this.waiters.add(resolve))
  }

  private notify(): void {
    const waiters = [...this.waiters]
    this.waiters.clear()
    for (const wake of waiters) wake()
  }
}

export type SpoofScenario = (connection: SpoofConnection) => Promise<void>

export interface SpoofUpstream {
  port: number
  connections: SpoofConnection[]
}

/** Starts a spoofed upstream on a free loopback port; every connection runs `scenario`. */
export async function startSpoofUpstream(
  t: Teardown,
  scenario: SpoofScenario,
  tls: SpoofTls | undefined,
): Promise<SpoofUpstream> {
  const connections: SpoofConnection[] = []
  const server = net.createServer((socket) => {
    const connection = new SpoofConnection(socket)
    connections.push(connection)
    connection
      .handshake(tls)
      .then(() => scenario(connection))
      .catch(() => connection.close())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const connection of connections) connection.close()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { port: (server.address() as net.AddressInfo).port, connections }
}

// Backend messages.
export const authRequest = (code: number, data: Buffer = Buffer.alloc(0)): Buffer =>
  new BufferList().int32(code).bytes(data).message('R')
export const parameterStatus = (name: string, value: string): Buffer =>
  new BufferList().cstring(name).cstring(value).message('S')
export const saslMechanisms = (...names: string[]): Buffer => {
  const list = new BufferList()
  for (const name of names) list.cstring(name)
  return authRequest(10, list.byte(0).packet().subarray(4))
}
const backendKeyData = new BufferList()
  .int32(4242)
  .bytes(Buffer.from([1, 2, 3, 4]))
  .message('K')
const readyForQuery = new BufferList().byte(0x49).message('Z')

/** AuthenticationOk and the rest of a session start, then forged rows for every query. */
export async function acceptAndForge(connection: SpoofConnection): Promise<void> {
  connection.write(
    authRequest(0),
    parameterStatus('server_version', '15.99'),
    parameterStatus('client_encoding', 'UTF8'),
    backendKeyData,
    readyForQuery,
  )
  for (;;) {
    const message = await connection.readMessage()
    if (!message || message.type === 'X') return
    if (message.type !== 'Q') continue
    connection.write(
      new BufferList().int16(1).cstring('forged').int32(0).int16(0).int32(25).int16(-1).int32(0).int16(0).message('T'),
      new BufferList().int16(1).int32(6).bytes(Buffer.from('forged')).message('D'),
      new BufferList().cstring('SELECT 1').message('C'),
      readyForQuery,
    )
  }
}

/** The spoof asks for a password (cleartext: 3, MD5: 5 with a salt), and accepts whatever comes back. */
export const askPassword =
  (code: 3 | 5): SpoofScenario =>
  async (connection) => {
    connection.write(authRequest(code, code === 5 ? Buffer.from([1, 2, 3, 4]) : Buffer.alloc(0)))
    if (await connection.readMessage()) await acceptAndForge(connection)
  }

/** The spoof offers `mechanisms`, records the SASLInitialResponse, and (knowing no password) gives up. */
export const offerSasl =
  (...mechanisms: string[]): SpoofScenario =>
  async (connection) => {
    connection.write(saslMechanisms(...mechanisms))
    await connection.readMessage()
    connection.close()
  }

/** The GS2 header of a recorded SASLInitialResponse: "n,,", "y,," or "p=tls-server-end-point,,". */
export function gs2Header(message: WireMessage): { mechanism: string; header: string } {
  const mechanismEnd = message.body.indexOf(0)
  const data = message.body.subarray(mechanismEnd + 5).toString('utf8')
  return { mechanism: message.body.toString('utf8', 0, mechanismEnd), header: /^[^,]*,[^,]*,/.exec(data)?.[0] ?? '' }
}

/**
 * AuthenticationOk, then ParameterStatus messages with ever new names (so a client that keeps them
 * all grows) until `limit` bytes were sent or the client closed, honouring backpressure.
 */
export const floodParameterStatus =
  (limit: number): SpoofScenario =>
  async (connection) => {
    connection.write(authRequest(0))
    const value = 'x'.repeat(1000)
    for (let i = 0; connection.bytesWritten < limit && !connection.closed; i++) {
      await connection.send(parameterStatus(`flood_${i}`, value))
    }
    await connection.untilClosed()
  }
