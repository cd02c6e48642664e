import { createHash } from 'node:crypto'

// "tls-server-end-point" channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS: a hash of the
// server certificate's DER, with the hash of the certificate's own signature algorithm, except that
// MD5 and SHA-1 are replaced by SHA-256. Node 20's X509Certificate does not expose the signature
// algorithm, so we read it from the DER with the small, bounds-checked reader below.

/** The certificate is malformed, or its signature algorithm defines no hash for channel binding. */
export class ChannelBindingError extends Error {
  override name = 'ChannelBindingError'
}

type HashName = 'sha224' | 'sha256' | 'sha384' | 'sha512'

/** Signature algorithm OIDs and the hash RFC 5929 prescribes for each (MD5 and SHA-1 already upgraded). */
const SIGNATURE_HASHES = new Map<string, HashName>([
  ['1.2.840.113549.1.1.4', 'sha256'], // md5WithRSAEncryption
  ['1.2.840.113549.1.1.5', 'sha256'], // sha1WithRSAEncryption
  ['1.2.840.113549.1.1.11', 'sha256'], // sha256WithRSAEncryption
  ['1.2.840.113549.1.1.12', 'sha384'], // sha384WithRSAEncryption
  ['1.2.840.113549.1.1.13', 'sha512'], // sha512WithRSAEncryption
  ['1.2.840.113549.1.1.14', 'sha224'], // sha224WithRSAEncryption
  ['1.2.840.10045.4.1', 'sha256'], // ecdsa-with-SHA1
  ['1.2.840.10045.4.3.1', 'sha224'], // ecdsa-with-SHA224
  ['1.2.840.10045.4.3.2', 'sha256'], // ecdsa-with-SHA256
  ['1.2.840.10045.4.3.3', 'sha384'], // ecdsa-with-SHA384
  ['1.2.840.10045.4.3.4', 'sha512'], // ecdsa-with-SHA512
])

/** Hash algorithm OIDs that may appear inside RSASSA-PSS parameters. */
const HASH_ALGORITHMS = new Map<string, HashName>([
  ['1.3.14.3.2.26', 'sha256'], // SHA-1, upgraded
  ['2.16.840.1.101.3.4.2.1', 'sha256'],
  ['2.16.840.1.101.3.4.2.2', 'sha384'],
  ['2.16.840.1.101.3.4.2.3', 'sha512'],
  ['2.16.840.1.101.3.4.2.4', 'sha224'],
])

const RSASSA_PSS = '1.2.840.113549.1.1.10'

/** Signature schemes that hash internally with no separate hash: RFC 5929 defines no binding for them. */
const NO_HASH_ALGORITHMS = new Map([
  ['1.3.101.112', 'Ed25519'],
  ['1.3.101.113', 'Ed448'],
])

const TAG_SEQUENCE = 0x30
const TAG_OID = 0x06
const TAG_BIT_STRING = 0x03
const TAG_CONTEXT_0 = 0xa0 // [0] EXPLICIT, constructed

/** The tls-server-end-point channel binding data for a server certificate given as DER. */
export function tlsServerEndPointHash(certDer: Buffer): Buffer {
  return createHash(channelBindingHash(certDer)).update(certDer).digest()
}

function channelBindingHash(certDer: Buffer): HashName {
  const { oid, params } = readSignatureAlgorithm(certDer)
  const hash = SIGNATURE_HASHES.get(oid)
  if (hash) return hash
  if (oid === RSASSA_PSS) return pssHash(certDer, params)
  const noHash = NO_HASH_ALGORITHMS.get(oid)
  if (noHash) {
    throw new ChannelBindingError(
      `channel binding is not supported for ${noHash} certificates: RFC 5929 defines no hash for them ` +
        '(libpq fails the login too); use an RSA or ECDSA server certificate, or channel_binding disable',
    )
  }
  throw new ChannelBindingError(`channel binding is not supported for certificate signature algorithm ${oid}`)
}

/** A DER element: its tag and where its contents start and end within the buffer. */
interface Element {
  tag: number
  start: number
  end: number
}

/**
 * Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm AlgorithmIdentifier, signature BIT STRING }
 * AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
 */
function readSignatureAlgorithm(der: Buffer): { oid: string; params: Element | undefined } {
  const certificate = expectTag(readElement(der, 0, der.length), TAG_SEQUENCE, 'Certificate')
  if (certificate.end !== der.length) throw malformed('trailing bytes after the certificate')
  const tbs = expectTag(readElement(der, certificate.start, certificate.end), TAG_SEQUENCE, 'tbsCertificate')
  const algorithm = readAlgorithmIdentifier(der, readElement(der, tbs.end, certificate.end), 'signatureAlgorithm')
  const signature = expectTag(readElement(der, algorithm.element.end, certificate.end), TAG_BIT_STRING, 'signature')
  if (signature.end !== certificate.end) throw malformed('trailing elements in the certificate')
  return { oid: algorithm.oid, params: algorithm.params }
}

function readAlgorithmIdentifier(
  der: Buffer,
  element: Element,
  what: string,
): { element: Element; oid: string; params: Element | undefined } {
  expectTag(element, TAG_SEQUENCE, what)
  const oidElement = expectTag(readElement(der, element.start, element.end), TAG_OID, `${what} algorithm`)
  const oid = decodeOid(der.subarray(oidElement.start, oidElement.end))
  if (oidElement.end === element.end) return { element, oid, params: undefined }
  const params = readElement(der, oidElement.end, element.end)
  if (params.end !== element.end) throw malformed(`trailing bytes in ${what}`)
  return { element, oid, params }
}

/**
 * RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] EXPLICIT AlgorithmIdentifier DEFAULT sha1, ... } (RFC 4055).
 * The binding hash is the signature's hash, as OpenSSL's X509_get_signature_info (used by PostgreSQL) reports it.
 */
function pssHash(der: Buffer, params: Element | undefined): HashName {
  try {
    if (!params) throw malformed('RSASSA-PSS parameters are missing')
    expectTag(params, TAG_SEQUENCE, 'RSASSA-PSS parameters')
    if (params.start === params.end) return 'sha256' // every field defaulted: SHA-1, upgraded
    const first = readElement(der, params.start, params.end)
    if (first.tag !== TAG_CONTEXT_0) return 'sha256' // hashAlgorithm defaulted: SHA-1, upgraded
    const inner = readElement(der, first.start, first.end)
    if (inner.end !== first.end) throw malformed('trailing bytes in RSASSA-PSS hashAlgorithm')
    const { oid } = readAlgorithmIdentifier(der, inner, 'RSASSA-PSS hashAlgorithm')
    const hash = HASH_ALGORITHMS.get(oid)
    if (!hash) throw new ChannelBindingError(`unsupported RSASSA-PSS hash algorithm ${oid}`)
    return hash
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err)
    throw new ChannelBindingError(`channel binding is not supported for this RSASSA-PSS certificate: ${reason}`, {
      cause: err,
    })
  }
}

/** Reads the element at `offset`, which must lie entirely before `limit`. */
function readElement(der: Buffer, offset: number, limit: number): Element {
  if (limit > der.length || offset + 2 > limit) throw malformed('truncated element')
  const tag = der.readUInt8(offset)
  if ((tag & 0x1f) === 0x1f) throw malformed('unexpected high-numbered tag')
  const lengthByte = der.readUInt8(offset + 1)
  let start = offset + 2
  let length = lengthByte
  if (lengthByte & 0x80) {
    const lengthBytes = lengthByte & 0x7f
    if (lengthBytes === 0) throw malformed('indefinite length is not DER')
    if (lengthBytes > 4) throw malformed('element length too large')
    if (start + lengthBytes > limit) throw malformed('truncated length')
    length = der.readUIntBE(start, lengthBytes)
    start += lengthBytes
  }
  if (length > limit - start) throw malformed('element runs past its container')
  return { tag, start, end: start + length }
}

function expectTag(element: Element, tag: number, what: string): Element {
  if (element.tag !== tag) throw malformed(`unexpected tag 0x${element.tag.toString(16)} for ${what}`)
  return element
}

/** Dotted form of an OBJECT IDENTIFIER's contents (X.690 §8.19). */
function decodeOid(bytes: Buffer): string {
  if (bytes.length === 0 || bytes.length > 64) throw malformed('bad object identifier length')
  const arcs: number[] = []
  let value = 0
  let arcBytes = 0
  for (const byte of bytes) {
    // 7 bytes = 49 bits: stays an exact integer, and no algorithm OID comes close.
    if (++arcBytes > 7) throw malformed('object identifier arc too large')
    value = value * 128 + (byte & 0x7f)
    if (byte & 0x80) continue
    arcs.push(value)
    value = 0
    arcBytes = 0
  }
  if (arcBytes !== 0) throw malformed('truncated object identifier')
  const [first = 0, ...rest] = arcs
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80]
  return [...head, ...rest].join('.')
}

function malformed(detail: string): ChannelBindingError {
  return new ChannelBindingError(`malformed server certificate: ${detail}`)
}
