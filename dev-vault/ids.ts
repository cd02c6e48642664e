/** Random identifiers and secrets in the shapes Vault gives them. */
import { randomBytes, randomUUID } from 'node:crypto'

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

/** Uniform random string over `charset` (rejection sampling, like Vault's base62.Random). */
export function randomFrom(charset: string, length: number): string {
  const limit = 256 - (256 % charset.length)
  let out = ''
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte >= limit) continue
      out += charset[byte % charset.length]
      if (out.length === length) break
    }
  }
  return out
}

/** base62.Random(n): [0-9A-Za-z], mixed case. */
export function randomBase62(length: number): string {
  return randomFrom(BASE62, length)
}

/** request_id, entity ids, role ids: an 8-4-4-4-12 hex UUID. */
export function newUuid(): string {
  return randomUUID()
}

/**
 * A service token. Real Vault ≥1.10 tokens are "hvs." plus ~90 characters of encoded protobuf;
 * only the prefix carries meaning, and clients must treat the rest as opaque.
 */
export function newServiceToken(): string {
  return `hvs.${randomBase62(24)}`
}

/**
 * A batch token. Real ones are "hvb." plus the token entry, encrypted and encoded (well over 100
 * characters); like service tokens they are opaque to clients, and batch tokens have no accessor.
 */
export function newBatchToken(): string {
  return `hvb.${randomBase62(120)}`
}

/** Token and secret-id accessors. */
export function newAccessor(): string {
  return randomBase62(24)
}

const LOWER = 'abcdefghijklmnopqrstuvwxyz'
const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'
const DIGITS = '0123456789'
const SYMBOL = '-'
const PASSWORD_CHARSET = [...`${SYMBOL}${DIGITS}${UPPER}${LOWER}`].sort().join('')

/**
 * random.DefaultStringGenerator, used for database passwords when no password policy is set:
 * 20 characters of [a-zA-Z0-9-] with at least one lowercase, uppercase, digit and '-'.
 * Like Vault, it draws again until the rules hold.
 */
export function generatePassword(): string {
  for (;;) {
    const candidate = randomFrom(PASSWORD_CHARSET, 20)
    const hasAll = [LOWER, UPPER, DIGITS, SYMBOL].every((set) => [...candidate].some((c) => set.includes(c)))
    if (hasAll) return candidate
  }
}
