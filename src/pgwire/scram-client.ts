import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto'
import { promisify } from 'node:util'
import { scramPassword } from './sasl-prep.js'

// Client side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as PostgreSQL speaks it
// (PostgreSQL: src/interfaces/libpq/fe-auth-scram.c). Pure: the caller moves the bytes over the wire.
// Everything the server sends is bounded and validated, so a hostile upstream cannot make us crash
// or do unbounded work, and error messages never carry the password, keys or proofs.

export type ScramMechanism = 'SCRAM-SHA-256' | 'SCRAM-SHA-256-PLUS'
export type ChannelBindingMode = 'prefer' | 'require' | 'disable'

/** A failed SCRAM exchange. The message is safe to show a user: it never includes secrets. */
export class ScramError extends Error {
  override name = 'ScramError'
}

export interface ScramKeys {
  clientKey: Buffer
  serverKey: Buffer
}

const pbkdf2Async = promisify(pbkdf2)

const KEY_LENGTH = 32 // SHA-256 output
/** A server SCRAM message longer than this is not PostgreSQL's (its are ~100 bytes). */
const MAX_SERVER_MESSAGE_BYTES = 4096
/** Nonces must be shorter than this. */
const MAX_NONCE_LENGTH = 1024
/**
 * Default cap on the server's iteration count. PostgreSQL's default is 4096 (scram_iterations); 1M
 * leaves room for hardened settings (OWASP suggests 600k) while bounding what a hostile or broken
 * server can make one uncached login cost (~0.5 s of a libuv thread).
 */
const DEFAULT_MAX_ITERATIONS = 1_000_000
const CLIENT_NONCE_BYTES = 18 // as libpq (SCRAM_RAW_NONCE_LEN)
/**
 * The GS2 header (RFC 5802 §7) as libpq builds it (fe-auth-scram.c, build_client_first_message):
 * "p=tls-server-end-point" when binding, "y" when the client could bind (TLS is up, binding not
 * disabled) but the server did not offer PLUS, "n" otherwise. A server that does offer PLUS fails a
 * "y" login (auth-scram.c, read_client_first_message), so a man in the middle that strips PLUS from
 * the offer is caught by the real server.
 */
const GS2_PLUS = 'p=tls-server-end-point,,'
const GS2_BINDING_SUPPORTED = 'y,,'
const GS2_NO_BINDING = 'n,,'
const PRINTABLE = /^[\x21-\x2b\x2d-\x7e]+$/ // RFC 5802 "printable": ASCII graphic characters except ','
const BASE64 = /^(?:[A-Z0-9+/]{4})*(?:[A-Z0-9+/]{2}==|[A-Z0-9+/]{3}=)?$/i
const ITERATION_COUNT = /^[1-9]\d{0,9}$/
const EXTENSION = /^[A-Z]=[^,]+$/i
const COMMA = Buffer.from(',')

const pbkdf2Key = (password: string, salt: Buffer, iterations: number): Promise<Buffer> =>
  pbkdf2Async(Buffer.from(scramPassword(password), 'utf8'), salt, iterations, KEY_LENGTH, 'sha256')
const hmac = (key: Buffer, data: Buffer | string): Buffer => createHmac('sha256', key).update(data).digest()
const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest()

/**
 * Caches {ClientKey, ServerKey} by (password, salt, iterations) so repeat logins skip PBKDF2. Bounded,
 * least recently used first out. Concurrent derivations of the same key share one PBKDF2 run, which
 * uses async crypto.pbkdf2 so the event loop never blocks.
 */
export class ScramKeyCache {
  private readonly entries = new Map<string, Promise<ScramKeys>>() // insertion order = recency
  // Entries are keyed by a keyed hash of the password, so a heap dump holds no unsalted fast hash of it.
  private readonly tagKey = randomBytes(32)
  private runs = 0

  constructor(private readonly maxEntries = 256) {
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1)
      throw new RangeError('maxEntries must be a positive integer')
  }

  /** The keys for this password, salt and iteration count. The returned buffers are the caller's own. */
  async derive(password: string, salt: Buffer, iterations: number): Promise<ScramKeys> {
    if (!Number.isSafeInteger(iterations) || iterations < 1) throw new ScramError('invalid SCRAM iteration count')
    const key = `${this.passwordTag(password)}:${salt.toString('base64')}:${iterations}`
    let entry = this.entries.get(key)
    if (entry) {
      this.entries.delete(key) // re-insert as most recently used
    } else {
      entry = this.compute(password, salt, iterations)
      // A failure is not cached: the next login retries.
      entry.catch(() => {
        if (this.entries.get(key) === entry) this.entries.delete(key)
      })
    }
    this.entries.set(key, entry)
    this.evictOverflow()
    const keys = await entry
    return { clientKey: Buffer.from(keys.clientKey), serverKey: Buffer.from(keys.serverKey) }
  }

  /** Drops every entry for a password, e.g. when its credential is retired. */
  forgetPassword(password: string): void {
    const prefix = `${this.passwordTag(password)}:`
    for (const key of [...this.entries.keys()]) if (key.startsWith(prefix)) this.entries.delete(key)
  }

  clear(): void {
    this.entries.clear()
  }

  get size(): number {
    return this.entries.size
  }

  /** How many PBKDF2 runs this cache has started (cache misses); for metrics and tests. */
  get derivationCount(): number {
    return this.runs
  }

  private async compute(password: string, salt: Buffer, iterations: number): Promise<ScramKeys> {
    this.runs++
    const saltedPassword = await pbkdf2Key(password, salt, iterations)
    const keys = { clientKey: hmac(saltedPassword, 'Client Key'), serverKey: hmac(saltedPassword, 'Server Key') }
    saltedPassword.fill(0)
    return keys
  }

  private passwordTag(password: string): string {
    return createHmac('sha256', this.tagKey).update(password, 'utf8').digest('base64')
  }

  private evictOverflow(): void {
    for (const key of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break
      this.entries.delete(key)
    }
  }
}

/**
 * Picks the SASL mechanism as libpq does (fe-auth.c, pg_SASL_init): over TLS, SCRAM-SHA-256-PLUS
 * whenever the server offers it and binding is not disabled; SCRAM-SHA-256 otherwise. A PLUS offer
 * without TLS is refused outright: PostgreSQL offers PLUS only over TLS, so TLS was stripped on the
 * way. With 'require', anything but PLUS is refused.
 */
export function chooseScramMechanism(
  offered: readonly string[],
  tlsInUse: boolean,
  channelBinding: ChannelBindingMode,
): ScramMechanism {
  const plusOffered = offered.includes('SCRAM-SHA-256-PLUS')
  if (plusOffered && !tlsInUse) {
    throw new ScramError(
      'the server offered SCRAM-SHA-256-PLUS authentication over a connection without TLS (TLS may have been stripped on the way)',
    )
  }
  if (plusOffered && channelBinding !== 'disable') return 'SCRAM-SHA-256-PLUS'
  if (channelBinding === 'require') {
    throw new ScramError(
      tlsInUse
        ? 'channel binding is required, but the server did not offer SCRAM-SHA-256-PLUS'
        : 'channel binding is required, but the connection does not use TLS',
    )
  }
  if (offered.includes('SCRAM-SHA-256')) return 'SCRAM-SHA-256'
  if (plusOffered) throw new ScramError('the server offers only SCRAM-SHA-256-PLUS, but channel binding is disabled')
  const names = offered.slice(0, 8).map(displayable).join(', ')
  throw new ScramError(`the server offers no supported SASL mechanism (offered: ${names || 'none'})`)
}

export interface ScramClientOptions {
  password: string
  mechanism: ScramMechanism
  /** tls-server-end-point data (see tlsServerEndPointHash); required for SCRAM-SHA-256-PLUS. */
  channelBindingData?: Buffer
  /**
   * For SCRAM-SHA-256: whether the client could have bound (TLS is up and channel binding is not
   * disabled), so the GS2 flag is "y" rather than "n". Ignored for PLUS.
   */
  bindingSupported?: boolean
  keyCache: ScramKeyCache
  /** Refuse servers asking for more PBKDF2 iterations than this (default 1,000,000). */
  maxIterations?: number
  /** Tests only: a fixed client nonce instead of a random one. */
  clientNonce?: string
  /**
   * Tests only: the SCRAM username, default ''. PostgreSQL ignores it (the startup packet names the
   * user), so libpq sends "n=,"; RFC test vectors need "n=user,". It is part of the AuthMessage.
   */
  scramUsername?: string
}

type State = 'initial' | 'first-sent' | 'deriving' | 'final-sent' | 'complete' | 'failed'

/** One SCRAM exchange: clientFirstMessage, then clientFinalMessage, then verifyServerFinal. */
export class ScramClient {
  private state: State = 'initial'
  private password: string
  private readonly keyCache: ScramKeyCache
  private readonly maxIterations: number
  private readonly clientNonce: string
  /** c= input: the GS2 header, followed by the channel binding data for PLUS. */
  private readonly channelBinding: Buffer
  private readonly gs2Header: string
  private readonly mechanism: ScramMechanism
  private readonly clientFirstBare: Buffer
  private expectedServerSignature: Buffer | undefined

  constructor(options: ScramClientOptions) {
    this.password = options.password
    this.keyCache = options.keyCache
    this.maxIterations = options.maxIterations ?? DEFAULT_MAX_ITERATIONS
    if (!Number.isSafeInteger(this.maxIterations) || this.maxIterations < 1) {
      throw new RangeError('maxIterations must be a positive integer')
    }
    this.clientNonce = options.clientNonce ?? randomBytes(CLIENT_NONCE_BYTES).toString('base64')
    if (!PRINTABLE.test(this.clientNonce) || this.clientNonce.length >= MAX_NONCE_LENGTH) {
      throw new RangeError('clientNonce must be printable ASCII without commas, shorter than 1024 characters')
    }
    this.mechanism = options.mechanism
    if (options.mechanism === 'SCRAM-SHA-256-PLUS') this.gs2Header = GS2_PLUS
    else this.gs2Header = options.bindingSupported === true ? GS2_BINDING_SUPPORTED : GS2_NO_BINDING
    this.channelBinding = Buffer.from(this.gs2Header, 'latin1')
    if (options.mechanism === 'SCRAM-SHA-256-PLUS') {
      const data = options.channelBindingData
      if (!data || data.length === 0) throw new ScramError('SCRAM-SHA-256-PLUS needs channel binding data (TLS)')
      this.channelBinding = Buffer.concat([this.channelBinding, data])
    }
    const user = escapeSaslName(options.scramUsername ?? '')
    this.clientFirstBare = Buffer.from(`n=${user},r=${this.clientNonce}`, 'utf8')
  }

  /** client-first-message: the GS2 header and client-first-message-bare ("n=,r=<nonce>"). */
  clientFirstMessage(): Buffer {
    this.advance('initial', 'first-sent')
    return Buffer.concat([Buffer.from(this.gs2Header, 'latin1'), this.clientFirstBare])
  }

  /** Validates server-first-message, derives the keys (cached) and returns client-final-message. */
  async clientFinalMessage(serverFirst: Buffer): Promise<Buffer> {
    this.advance('first-sent', 'deriving')
    try {
      const { nonce, salt, iterations } = parseServerFirst(serverFirst, this.clientNonce, this.maxIterations)
      const serverFirstBytes = Buffer.from(serverFirst) // the caller may reuse its buffer while we derive
      const password = this.password
      this.password = '' // not needed after this exchange: keep it no longer than necessary
      const keys = await this.keyCache.derive(password, salt, iterations)

      const withoutProof = Buffer.from(`c=${this.channelBinding.toString('base64')},r=${nonce}`, 'latin1')
      const authMessage = Buffer.concat([this.clientFirstBare, COMMA, serverFirstBytes, COMMA, withoutProof])
      const clientSignature = hmac(sha256(keys.clientKey), authMessage)
      const proof = xor(keys.clientKey, clientSignature)
      this.expectedServerSignature = hmac(keys.serverKey, authMessage)
      this.state = 'final-sent'
      return Buffer.concat([withoutProof, Buffer.from(`,p=${proof.toString('base64')}`, 'latin1')])
    } catch (err) {
      this.state = 'failed'
      throw err
    }
  }

  /** Checks server-final-message; throws ScramError unless the server proved it knows the password. */
  verifyServerFinal(serverFinal: Buffer): void {
    this.advance('final-sent', 'failed') // stays failed unless verification succeeds
    const [first, ...extensions] = decodeServerMessage(serverFinal, 'server-final-message').split(',')
    if (first?.startsWith('e=')) {
      throw new ScramError(`the server rejected SCRAM authentication: ${displayable(first.slice(2))}`)
    }
    const verifier = attributeValue(first, 'v', 'server-final-message')
    checkExtensions(extensions, 'server-final-message')
    const signature = decodeBase64(verifier, 'server signature')
    const expected = this.expectedServerSignature
    this.expectedServerSignature = undefined
    if (!expected || signature.length !== expected.length || !timingSafeEqual(signature, expected)) {
      throw new ScramError(
        'server signature mismatch: the server did not prove it knows the password (wrong server, or tampering)',
      )
    }
    this.state = 'complete'
  }

  /** True only after the server's signature has been verified. */
  get isComplete(): boolean {
    return this.state === 'complete'
  }

  /**
   * True only after a verified SCRAM-SHA-256-PLUS exchange: the server proved it knows the password
   * over this very TLS connection (libpq: scram_channel_bound in fe-auth-scram.c).
   */
  get isChannelBound(): boolean {
    return this.isComplete && this.mechanism === 'SCRAM-SHA-256-PLUS'
  }

  private advance(from: State, to: State): void {
    if (this.state !== from) throw new ScramError(`SCRAM exchange out of order (in state ${this.state})`)
    this.state = to
  }
}

interface ServerFirst {
  nonce: string
  salt: Buffer
  iterations: number
}

/** server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions] */
function parseServerFirst(message: Buffer, clientNonce: string, maxIterations: number): ServerFirst {
  const what = 'server-first-message'
  const [nonceAttr, saltAttr, iterationsAttr, ...extensions] = decodeServerMessage(message, what).split(',')
  if (nonceAttr?.startsWith('m=')) throw new ScramError('the server requires an unsupported SCRAM extension')

  const nonce = attributeValue(nonceAttr, 'r', what)
  if (nonce.length >= MAX_NONCE_LENGTH || !PRINTABLE.test(nonce)) {
    throw new ScramError('malformed server-first-message: invalid nonce')
  }
  if (!nonce.startsWith(clientNonce) || nonce.length === clientNonce.length) {
    throw new ScramError('the server nonce does not extend the client nonce')
  }

  const salt = decodeBase64(attributeValue(saltAttr, 's', what), 'salt')
  if (salt.length === 0) throw new ScramError('malformed server-first-message: empty salt')

  const count = attributeValue(iterationsAttr, 'i', what)
  if (!ITERATION_COUNT.test(count)) throw new ScramError('malformed server-first-message: invalid iteration count')
  const iterations = Number(count)
  if (iterations > maxIterations) {
    throw new ScramError(`the server asks for ${iterations} SCRAM iterations, more than the limit of ${maxIterations}`)
  }

  checkExtensions(extensions, what)
  return { nonce, salt, iterations }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function decodeServerMessage(message: Buffer, what: string): string {
  if (message.length > MAX_SERVER_MESSAGE_BYTES) throw new ScramError(`${what} is too long`)
  let text: string
  try {
    text = utf8.decode(message)
  } catch {
    throw new ScramError(`malformed ${what}: not valid UTF-8`)
  }
  if (text.includes('\0')) throw new ScramError(`malformed ${what}: contains NUL`)
  return text
}

function attributeValue(attribute: string | undefined, name: string, what: string): string {
  if (attribute === undefined || !attribute.startsWith(`${name}=`) || attribute.length === 2) {
    throw new ScramError(`malformed ${what}: expected attribute "${name}="`)
  }
  return attribute.slice(2)
}

/** Optional extensions (RFC 5802 §7) carry nothing we act on, but must be well formed. */
function checkExtensions(extensions: readonly string[], what: string): void {
  if (!extensions.every((extension) => EXTENSION.test(extension))) {
    throw new ScramError(`malformed ${what}: unexpected trailing data`)
  }
}

/** Strict base64: Buffer.from(…, 'base64') would silently skip invalid characters. */
function decodeBase64(value: string, what: string): Buffer {
  if (!BASE64.test(value)) throw new ScramError(`malformed ${what}: not valid base64`)
  return Buffer.from(value, 'base64')
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length)
  for (let i = 0; i < a.length; i++) out[i] = (a[i] ?? 0) ^ (b[i] ?? 0)
  return out
}

/** RFC 5802 saslname: ',' and '=' are escaped. */
function escapeSaslName(name: string): string {
  return name.replaceAll('=', '=3D').replaceAll(',', '=2C')
}

/** Server-supplied text for an error message: printable ASCII only, bounded. */
function displayable(text: string): string {
  const clean = text.replace(/[^\x20-\x7e]/g, '?')
  return clean.length > 100 ? `${clean.slice(0, 100)}...` : clean
}
