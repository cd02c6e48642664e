/**
 * The subject and authority key identifiers of an X.509 certificate (RFC 5280 §4.2.1.1-2), which
 * the cert auth method puts in a login's metadata and node:crypto's X509Certificate does not
 * expose. A small DER walk: Certificate → tbsCertificate → [3] extensions → Extension {extnID,
 * critical?, extnValue}. Linear in the certificate's size; anything malformed gives no ids.
 */

interface Tlv {
  tag: number
  /** Where the value starts and ends in the buffer. */
  start: number
  end: number
}

const SUBJECT_KEY_ID_OID = Buffer.from([0x55, 0x1d, 0x0e]) // 2.5.29.14
const AUTHORITY_KEY_ID_OID = Buffer.from([0x55, 0x1d, 0x23]) // 2.5.29.35

function readTlv(der: Buffer, offset: number, limit: number): Tlv | undefined {
  if (offset + 2 > limit) return undefined
  const tag = der[offset]!
  let length = der[offset + 1]!
  let start = offset + 2
  if (length & 0x80) {
    const count = length & 0x7f
    if (count === 0 || count > 4 || start + count > limit) return undefined
    length = 0
    for (let i = 0; i < count; i++) length = length * 256 + der[start + i]!
    start += count
  }
  const end = start + length
  return end > limit ? undefined : { tag, start, end }
}

/** The TLVs directly inside a constructed value. */
function children(der: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = []
  for (let offset = parent.start; offset < parent.end;) {
    const tlv = readTlv(der, offset, parent.end)
    if (tlv === undefined) return out
    out.push(tlv)
    offset = tlv.end
  }
  return out
}

/** Lowercase hex pairs joined with ":", as Vault's certutil.GetHexFormatted writes them. */
function hexFormatted(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':')
}

/** subject_key_id and authority_key_id as Vault's cert login metadata shows them ("" when absent). */
export function keyIdentifiers(der: Buffer): { subjectKeyId: string; authorityKeyId: string } {
  const ids = { subjectKeyId: '', authorityKeyId: '' }
  const certificate = readTlv(der, 0, der.length)
  const tbs = certificate && children(der, certificate)[0]
  const extensionsWrapper = tbs && children(der, tbs).find((t) => t.tag === 0xa3)
  const extensions = extensionsWrapper && children(der, extensionsWrapper)[0]
  if (extensions === undefined) return ids
  for (const extension of children(der, extensions)) {
    const [id, ...rest] = children(der, extension)
    const value = rest.find((t) => t.tag === 0x04)
    if (id === undefined || value === undefined) continue
    const oid = der.subarray(id.start, id.end)
    if (oid.equals(SUBJECT_KEY_ID_OID)) {
      // extnValue holds an OCTET STRING: the key identifier.
      const inner = readTlv(der, value.start, value.end)
      if (inner?.tag === 0x04) ids.subjectKeyId = hexFormatted(der.subarray(inner.start, inner.end))
    } else if (oid.equals(AUTHORITY_KEY_ID_OID)) {
      // extnValue holds SEQUENCE { [0] keyIdentifier OPTIONAL, … }.
      const sequence = readTlv(der, value.start, value.end)
      const keyId = sequence && children(der, sequence).find((t) => t.tag === 0x80)
      if (keyId) ids.authorityKeyId = hexFormatted(der.subarray(keyId.start, keyId.end))
    }
  }
  return ids
}
