/**
 * The TLS certificate auth method (builtin/credential/cert), minimal: roles at certs/:name name a
 * CA (or a client certificate itself) and the token fields; auth/<mount>/login takes the client
 * certificate of the TLS connection and logs in with the first role (by name, or the one given as
 * `name`) that trusts it. Checked: the signature of the role's CA on the certificate (no
 * intermediates), its validity dates, the clientAuth extended key usage, allowed_common_names.
 * Not implemented: CRLs, OCSP, the other allowed_* constraints, required extensions, proxied
 * certificates.
 */
import { X509Certificate } from 'node:crypto'
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { respondError } from '../envelope.js'
import { addCollection } from '../collection-routes.js'
import { Router } from '../router.js'
import { defaultTokenParams, loginFrom, parseTokenFields, renewalFor, tokenData } from '../token-params.js'
import type { TokenParams } from '../token-params.js'
import { keyIdentifiers } from '../x509-key-ids.js'
import { matchesGlobList } from '../glob.js'

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2'
const ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0'

interface CertRole {
  /** The PEM as written, shown on read. */
  certificate: string
  certificates: X509Certificate[]
  displayName: string
  allowedCommonNames: string[]
  token: TokenParams
}

/** Every certificate in a PEM bundle; [] when none parses. */
function parsePem(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []
  const parsed: X509Certificate[] = []
  for (const block of blocks) {
    try {
      parsed.push(new X509Certificate(block))
    } catch {
      return []
    }
  }
  return parsed
}

function commonName(cert: X509Certificate): string {
  return /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? ''
}

/** Whether the certificate may be used for TLS client authentication (x509 Verify's KeyUsages). */
function allowsClientAuth(cert: X509Certificate): boolean {
  const usages = cert.keyUsage
  return usages === undefined || usages.includes(CLIENT_AUTH) || usages.includes(ANY_EXTENDED_KEY_USAGE)
}

function isCurrent(cert: X509Certificate, nowMs: number): boolean {
  return Date.parse(cert.validFrom) <= nowMs && nowMs <= Date.parse(cert.validTo)
}

/** The role's certificate is the client certificate itself (a non-CA entry), or its CA signed it. */
function trusts(role: CertRole, client: X509Certificate): boolean {
  return role.certificates.some((trusted) =>
    trusted.ca ? client.checkIssued(trusted) && client.verify(trusted.publicKey) : trusted.raw.equals(client.raw),
  )
}

export function certBackend(core: VaultCore, _mount: Mount): Backend {
  const roles = new Map<string, CertRole>()

  function writeRole(req: BackendRequest): BackendResult {
    const f = req.fields
    const name = (req.params.name ?? '').toLowerCase()
    const existing = roles.get(name)
    const certificate = f.string('certificate', existing?.certificate ?? '')
    if (certificate === '') throw respondError('missing certificate')
    const certificates = parsePem(certificate)
    if (certificates.length === 0) throw respondError('failed to parse certificate')
    const first = certificates[0]!
    if (!first.ca && !allowsClientAuth(first)) {
      throw respondError('nonCA certificates should have TLS client authentication set as an extended key usage')
    }
    const token = parseTokenFields(f, existing?.token ?? defaultTokenParams())
    if (token.maxTtlSeconds !== 0 && token.ttlSeconds > token.maxTtlSeconds) {
      throw respondError('ttl should be shorter than max_ttl')
    }
    roles.set(name, {
      certificate,
      certificates,
      displayName: f.string('display_name', existing?.displayName ?? '') || name,
      allowedCommonNames: f.has('allowed_common_names')
        ? f.commaList('allowed_common_names')
        : (existing?.allowedCommonNames ?? []),
      token,
    })
    return undefined
  }

  /** verifyCredentials: which role this connection's client certificate logs in with. */
  function matchRole(req: BackendRequest, client: X509Certificate, only: string): [string, CertRole] {
    const candidates = [...roles.entries()]
      .filter(([name]) => only === '' || name === only)
      .sort(([a], [b]) => (a < b ? -1 : 1))
    const trusted = isCurrent(client, core.now()) && allowsClientAuth(client)
    const chained = trusted ? candidates.filter(([, role]) => trusts(role, client)) : []
    if (chained.length === 0) throw respondError('invalid certificate or no client certificate supplied')
    const matched = chained.find(
      ([, role]) =>
        role.allowedCommonNames.length === 0 || matchesGlobList(role.allowedCommonNames, commonName(client)),
    )
    if (matched === undefined) {
      throw respondError('no chain matching all constraints could be found for this login certificate')
    }
    return matched
  }

  function login(req: BackendRequest): BackendResult {
    const der = req.connection.clientCertificate
    // Vault's texts; OpenBao's handleCerts says "no client certificate found" for both.
    const openbao = core.flavor.name === 'openbao'
    if (der === undefined) throw respondError(openbao ? 'no client certificate found' : 'tls connection required')
    if (der === null)
      throw respondError(openbao ? 'no client certificate found' : 'client certificate must be supplied')
    const client = new X509Certificate(der)
    const [name, role] = matchRole(req, client, req.fields.string('name').toLowerCase())
    const { subjectKeyId, authorityKeyId } = keyIdentifiers(der)
    const cn = commonName(client)
    return {
      login: loginFrom(role.token, {
        displayName: role.displayName,
        metadata: {
          authority_key_id: authorityKeyId,
          cert_name: name,
          common_name: cn,
          serial_number: BigInt(`0x${client.serialNumber}`).toString(10),
          subject_key_id: subjectKeyId,
        },
        aliasName: cn,
        internal: { role: name },
      }),
    }
  }

  const router = new Router<BackendRequest, BackendResult>().add('login', { write: login })
  addCollection(router, 'certs', roles, {
    read: (req) => {
      const role = roles.get((req.params.name ?? '').toLowerCase())
      if (role === undefined) return undefined
      return {
        data: {
          allowed_common_names: role.allowedCommonNames,
          certificate: role.certificate,
          display_name: role.displayName,
          ...tokenData(role.token),
        },
      }
    },
    write: writeRole,
  })
  return {
    router,
    unauthenticatedPaths: ['login'],
    renewLogin: (token) =>
      renewalFor(String(token.internal.role), roles.get(String(token.internal.role))?.token, token),
  }
}
