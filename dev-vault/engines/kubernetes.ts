/**
 * The Kubernetes auth method (vault-plugin-auth-kubernetes), without Kubernetes.
 *
 * A real Vault sends the service account JWT to the cluster's TokenReview API, which says whether
 * the token is genuine and not revoked. The dev Vault cannot: it checks what Vault checks locally
 * and trusts the rest. It verifies the JWT signature only when the config has `pem_keys` (as
 * Vault does too); without them it TRUSTS THE TOKEN'S CLAIMS, so any well-formed JWT naming an
 * allowed service account and namespace logs in. Never point a dev Vault at anything real.
 */
import type { Backend, BackendRequest, BackendResult, Mount } from '../backend.js'
import type { VaultCore } from '../core.js'
import { goError, respondError } from '../envelope.js'
import { parsePublicKey, SUPPORTED_ALGORITHMS, validateJwt } from '../jwt-validator.js'
import { addCollection } from '../collection-routes.js'
import { Router } from '../router.js'
import { defaultTokenParams, loginFrom, parseTokenFields, renewalFor, tokenData } from '../token-params.js'
import type { TokenParams } from '../token-params.js'
import { matchesGlobList } from '../glob.js'

interface KubernetesConfig {
  kubernetesHost: string
  kubernetesCaCert: string
  tokenReviewerJwt: string
  pemKeys: string[]
  issuer: string
  disableIssValidation: boolean
  disableLocalCaJwt: boolean
}

interface KubernetesRole {
  boundServiceAccountNames: string[]
  boundServiceAccountNamespaces: string[]
  audience: string
  aliasNameSource: string
  token: TokenParams
}

interface ServiceAccount {
  name: string
  namespace: string
  uid: string
  secretName: string
}

/** The service account named by a legacy secret token or a projected token. */
function serviceAccountOf(claims: Record<string, unknown>): ServiceAccount {
  const str = (v: unknown) => (typeof v === 'string' ? v : '')
  const projected = claims['kubernetes.io'] as
    { namespace?: unknown; serviceaccount?: { name?: unknown; uid?: unknown } } | undefined
  return {
    name: str(projected?.serviceaccount?.name) || str(claims['kubernetes.io/serviceaccount/service-account.name']),
    namespace: str(projected?.namespace) || str(claims['kubernetes.io/serviceaccount/namespace']),
    uid: str(projected?.serviceaccount?.uid) || str(claims['kubernetes.io/serviceaccount/service-account.uid']),
    secretName: str(claims['kubernetes.io/serviceaccount/secret.name']),
  }
}

export function kubernetesBackend(core: VaultCore, _mount: Mount): Backend {
  let config: KubernetesConfig | undefined
  const roles = new Map<string, KubernetesRole>()

  function writeConfig(req: BackendRequest): BackendResult {
    const f = req.fields
    const host = f.string('kubernetes_host')
    if (host === '') throw respondError('no host provided')
    const pemKeys = f.commaList('pem_keys')
    for (const pem of pemKeys) {
      try {
        parsePublicKey(pem)
      } catch (err) {
        throw respondError((err as Error).message)
      }
    }
    config = {
      kubernetesHost: host,
      kubernetesCaCert: f.string('kubernetes_ca_cert'),
      tokenReviewerJwt: f.string('token_reviewer_jwt'),
      pemKeys,
      issuer: f.string('issuer'),
      disableIssValidation: f.bool('disable_iss_validation', true),
      disableLocalCaJwt: f.bool('disable_local_ca_jwt', false),
    }
    return undefined
  }

  function writeRole(req: BackendRequest): BackendResult {
    const f = req.fields
    const name = req.params.name ?? ''
    const existing = roles.get(name)
    const role: KubernetesRole = existing
      ? { ...existing }
      : {
          boundServiceAccountNames: [],
          boundServiceAccountNamespaces: [],
          audience: '',
          aliasNameSource: 'serviceaccount_uid',
          token: defaultTokenParams(),
        }
    role.token = parseTokenFields(f, role.token)
    if (f.has('bound_service_account_names')) role.boundServiceAccountNames = f.commaList('bound_service_account_names')
    if (f.has('bound_service_account_namespaces')) {
      role.boundServiceAccountNamespaces = f.commaList('bound_service_account_namespaces')
    }
    role.audience = f.string('audience', role.audience)
    role.aliasNameSource = f.string('alias_name_source', role.aliasNameSource)
    if (role.boundServiceAccountNames.length === 0) throw respondError('"bound_service_account_names" can not be empty')
    if (role.boundServiceAccountNamespaces.length === 0) {
      throw respondError('"bound_service_account_namespaces" can not be empty')
    }
    if (!['serviceaccount_uid', 'serviceaccount_name'].includes(role.aliasNameSource)) {
      throw respondError(`invalid alias_name_source ${JSON.stringify(role.aliasNameSource)}`)
    }
    roles.set(name, role)
    return undefined
  }

  function login(req: BackendRequest): BackendResult {
    const roleName = req.fields.string('role')
    if (roleName === '') throw respondError('missing role')
    const jwt = req.fields.string('jwt')
    if (jwt === '') throw respondError('missing jwt')
    const role = roles.get(roleName)
    if (role === undefined) throw respondError(`invalid role name ${JSON.stringify(roleName)}`)
    if (config === undefined) throw goError('could not load backend configuration')

    let claims: Record<string, unknown>
    try {
      claims = validateJwt(
        jwt,
        config.pemKeys.length > 0 ? config.pemKeys.map(parsePublicKey) : undefined,
        {
          algorithms: SUPPORTED_ALGORITHMS,
          issuer: !config.disableIssValidation && config.issuer !== '' ? config.issuer : undefined,
          audiences: role.audience !== '' ? [role.audience] : undefined,
          allowMissingTimes: true,
        },
        core.now(),
      )
    } catch (err) {
      const message = (err as Error).message
      if (message.includes('verifying token signature')) throw goError('permission denied', 403)
      throw goError(message, 403)
    }

    const sa = serviceAccountOf(claims)
    const anyName = role.boundServiceAccountNames.length === 1 && role.boundServiceAccountNames[0] === '*'
    if (!anyName && !matchesGlobList(role.boundServiceAccountNames, sa.name)) {
      throw goError('service account name not authorized', 403)
    }
    const anyNamespace = role.boundServiceAccountNamespaces[0] === '*'
    if (!anyNamespace && !matchesGlobList(role.boundServiceAccountNamespaces, sa.namespace)) {
      throw goError('namespace not authorized', 403)
    }
    // Here Vault would ask the TokenReview API; the dev Vault trusts the token (see above).
    if (sa.uid === '') throw goError('could not parse UID from claims')

    const metadata = {
      role: roleName,
      service_account_name: sa.name,
      service_account_namespace: sa.namespace,
      service_account_secret_name: sa.secretName,
      service_account_uid: sa.uid,
    }
    const aliasName = role.aliasNameSource === 'serviceaccount_name' ? `${sa.namespace}/${sa.name}` : sa.uid
    return {
      login: loginFrom(role.token, {
        displayName: `${sa.namespace}-${sa.name}`,
        metadata,
        aliasName,
        internal: { role: roleName },
      }),
    }
  }

  const router = new Router<BackendRequest, BackendResult>().add('login', { write: login }).add('config', {
    read: () =>
      config === undefined
        ? undefined
        : {
            data: {
              disable_iss_validation: config.disableIssValidation,
              disable_local_ca_jwt: config.disableLocalCaJwt,
              issuer: config.issuer,
              kubernetes_ca_cert: config.kubernetesCaCert,
              kubernetes_host: config.kubernetesHost,
              pem_keys: config.pemKeys,
            },
          },
    write: writeConfig,
  })
  addCollection(router, 'role', roles, {
    read: (req) => {
      const role = roles.get(req.params.name ?? '')
      if (role === undefined) return undefined
      return {
        data: {
          alias_name_source: role.aliasNameSource,
          ...(role.audience !== '' ? { audience: role.audience } : {}),
          bound_service_account_names: role.boundServiceAccountNames,
          bound_service_account_namespaces: role.boundServiceAccountNamespaces,
          ...tokenData(role.token),
        },
      }
    },
    write: writeRole,
  })

  return {
    router,
    unauthenticatedPaths: ['login'],
    renewLogin: (token) => {
      const name = String(token.internal.role)
      return renewalFor(name, roles.get(name)?.token, token)
    },
  }
}
