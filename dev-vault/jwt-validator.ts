/**
 * JWT validation for the kubernetes and jwt auth methods, following hashicorp/cap's
 * jwt.Validator: verify the compact JWS signature against static public keys (node:crypto),
 * check the algorithm, then iss/sub/aud and the time claims with leeway. Error texts are cap's.
 */
import { constants, createPublicKey, verify, X509Certificate } from 'node:crypto'
import type { KeyObject } from 'node:crypto'

export const SUPPORTED_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
  'EdDSA',
] as const

export interface ExpectedClaims {
  issuer?: string
  subject?: string
  audiences?: readonly string[]
  algorithms: readonly string[]
  /** 0 = cap's default (150 s for exp/nbf derivation, 60 s clock skew); negative = none. */
  expirationLeewaySeconds?: number
  notBeforeLeewaySeconds?: number
  clockSkewLeewaySeconds?: number
  /** Kubernetes tokens may carry no iat/nbf/exp at all (ValidateAllowMissingIatNbfExp). */
  allowMissingTimes?: boolean
}

/** The JWT's claims, or an Error with cap's text. `keys: undefined` skips the signature check. */
export function validateJwt(
  token: string,
  keys: readonly KeyObject[] | undefined,
  expected: ExpectedClaims,
  nowMs: number,
): Record<string, unknown> {
  const jws = decodeCompactJws(token)
  if (keys !== undefined && !keys.some((key) => verifySignature(jws, key))) {
    throw new Error('error verifying token signature: no known key successfully validated the token signature')
  }
  const alg = jws.header.alg
  if (typeof alg !== 'string' || !expected.algorithms.includes(alg)) {
    throw new Error('invalid algorithm (alg) header parameter: token signed with unexpected algorithm')
  }
  const claims = jws.claims
  if (expected.issuer && expected.issuer !== claims.iss) throw new Error('invalid issuer (iss) claim')
  if (expected.subject && expected.subject !== claims.sub) throw new Error('invalid subject (sub) claim')
  if (expected.audiences && expected.audiences.length > 0) {
    const aud = audiencesOf(claims)
    if (!expected.audiences.some((a) => aud.includes(a))) {
      throw new Error('invalid audience (aud) claim: audience claim does not match any expected audience')
    }
  }
  validateTimes(claims, expected, nowMs)
  return claims
}

export function audiencesOf(claims: Record<string, unknown>): string[] {
  const aud = claims.aud
  if (typeof aud === 'string') return [aud]
  return Array.isArray(aud) ? aud.filter((a): a is string => typeof a === 'string') : []
}

function leeway(seconds: number | undefined, fallback: number): number {
  if (seconds === undefined || seconds === 0) return fallback
  return seconds < 0 ? 0 : seconds
}

function validateTimes(claims: Record<string, unknown>, expected: ExpectedClaims, nowMs: number): void {
  const num = (v: unknown) => (typeof v === 'number' ? Math.trunc(v) : 0)
  const iat = num(claims.iat)
  let exp = num(claims.exp)
  let nbf = num(claims.nbf)
  if (iat === 0 && exp === 0 && nbf === 0) {
    if (expected.allowMissingTimes) return
    throw new Error('no issued at (iat), not before (nbf), or expiration time (exp) claims in token')
  }
  if (exp === 0) exp = Math.max(iat, nbf) + leeway(expected.expirationLeewaySeconds, 150)
  if (nbf === 0) nbf = iat !== 0 ? iat : exp - leeway(expected.notBeforeLeewaySeconds, 150)
  const skew = leeway(expected.clockSkewLeewaySeconds, 60)
  const now = nowMs / 1000
  if (now + skew < nbf) throw new Error('invalid not before (nbf) claim: token not yet valid')
  if (now - skew > exp) throw new Error('invalid expiration time (exp) claim: token is expired')
  if (iat !== 0 && now + skew < iat) throw new Error('invalid issued at (iat) claim: token issued in the future')
}

// ---------------------------------------------------------------------------
// JWS

interface CompactJws {
  header: Record<string, unknown>
  claims: Record<string, unknown>
  signingInput: string
  signature: Buffer
}

function decodeCompactJws(token: string): CompactJws {
  const parts = token.split('.')
  if (parts.length !== 3) throw new Error('error verifying token signature: compact JWS format must have three parts')
  const [header, payload, signature] = parts as [string, string, string]
  try {
    return {
      header: JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as Record<string, unknown>,
      claims: JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>,
      signingInput: `${header}.${payload}`,
      signature: Buffer.from(signature, 'base64url'),
    }
  } catch (err) {
    throw new Error(`error verifying token signature: ${(err as Error).message}`, { cause: err })
  }
}

function verifySignature(jws: CompactJws, key: KeyObject): boolean {
  const alg = String(jws.header.alg)
  const data = Buffer.from(jws.signingInput)
  const hash = `sha${alg.slice(2)}`
  try {
    if (alg === 'EdDSA') return verify(null, data, key, jws.signature)
    if (alg.startsWith('RS')) return verify(hash, data, key, jws.signature)
    if (alg.startsWith('PS')) {
      const options = { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
      return verify(hash, data, options, jws.signature)
    }
    if (alg.startsWith('ES')) return verify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, jws.signature)
  } catch {
    // A key of the wrong type for the algorithm does not validate the token.
  }
  return false
}

/**
 * cap's ParsePublicKeyPEM: an RSA or ECDSA key as a PEM "PUBLIC KEY" (PKIX) or in a certificate.
 * Anything else is refused with cap's message.
 */
export function parsePublicKey(pem: string): KeyObject {
  let key: KeyObject | undefined
  try {
    if (/-----BEGIN CERTIFICATE-----/.test(pem)) key = new X509Certificate(pem).publicKey
    else if (/-----BEGIN PUBLIC KEY-----/.test(pem)) key = createPublicKey({ key: pem, format: 'pem', type: 'spki' })
  } catch {
    key = undefined
  }
  if (key === undefined || (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'ec')) {
    throw new Error('data does not contain any valid RSA or ECDSA public keys')
  }
  return key
}
