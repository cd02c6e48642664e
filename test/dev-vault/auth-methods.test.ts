/**
 * Auth methods (builtin/credential/approle, vault-plugin-auth-kubernetes, vault-plugin-auth-jwt): AppRole roles, secret ids and login; Kubernetes config,
 * roles and login (the dev Vault has no TokenReview: see docs/dev-vault.md); JWT login against
 * static public keys with audience, issuer, bound claims and expiry checks.
 */
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import t from 'tap'
import { devOnly, vaultFor } from '../support/vault-target.js'
import type { VaultTarget } from '../support/vault-target.js'

interface Auth {
  client_token: string
  policies: string[]
  token_policies: string[]
  metadata: Record<string, string> | null
  lease_duration: number
  renewable: boolean
  entity_id: string
  token_type: string
  orphan: boolean
}

interface Envelope {
  data: Record<string, unknown> | null
  warnings: string[] | null
  auth: Auth | null
  mount_type: string
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

function jwt(claims: Record<string, unknown>, key: KeyObject, alg: 'RS256' | 'ES256' = 'RS256'): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const input = `${encode({ alg, typ: 'JWT' })}.${encode(claims)}`
  const signature =
    alg === 'ES256'
      ? sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
      : sign('sha256', Buffer.from(input), key)
  return `${input}.${signature.toString('base64url')}`
}

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 })
const pem = (key: KeyObject) => key.export({ type: 'spki', format: 'pem' }).toString()
const now = () => Math.floor(Date.now() / 1000)

async function lookupSelf(vault: VaultTarget, token: string): Promise<Record<string, unknown>> {
  return ((await vault.request('GET', 'auth/token/lookup-self', { token })).json as Envelope).data!
}

// ---------------------------------------------------------------------------
// AppRole

async function approleMount(vault: VaultTarget): Promise<string> {
  return vault.enableAuth('approle-t', 'approle')
}

void t.test(
  'AppRole: role read shape, role-id, secret-id, login with the auth block and token properties',
  async (t) => {
    const vault = await vaultFor(t)
    const mount = await approleMount(vault)
    const policy = await vault.policy('approle-proxy', 'path "secret/data/x" { capabilities = ["read"] }')
    t.equal(
      (
        await vault.request('POST', `auth/${mount}/role/proxy`, {
          body: { token_policies: policy, token_ttl: '1h', token_max_ttl: '4h' },
        })
      ).status,
      204,
    )

    const role = ((await vault.call('GET', `auth/${mount}/role/proxy`)).json as Envelope).data!
    t.same(
      {
        bind_secret_id: role.bind_secret_id,
        secret_id_ttl: role.secret_id_ttl,
        secret_id_num_uses: role.secret_id_num_uses,
        token_policies: role.token_policies,
        token_ttl: role.token_ttl,
        token_max_ttl: role.token_max_ttl,
        token_type: role.token_type,
        token_bound_cidrs: role.token_bound_cidrs,
      },
      {
        bind_secret_id: true,
        secret_id_ttl: 0,
        secret_id_num_uses: 0,
        token_policies: [policy],
        token_ttl: 3600,
        token_max_ttl: 14400,
        token_type: 'default',
        token_bound_cidrs: [],
      },
    )
    const roleId = ((await vault.call('GET', `auth/${mount}/role/proxy/role-id`)).json as Envelope).data!
      .role_id as string
    t.match(roleId, UUID)
    const secret = ((await vault.call('POST', `auth/${mount}/role/proxy/secret-id`, {})).json as Envelope).data!
    t.same(Object.keys(secret), ['secret_id', 'secret_id_accessor', 'secret_id_num_uses', 'secret_id_ttl'])
    t.match(secret.secret_id, UUID)

    const login = await vault.request('POST', `auth/${mount}/login`, {
      token: null,
      body: { role_id: roleId, secret_id: secret.secret_id },
    })
    t.equal(login.status, 200)
    const body = login.json as Envelope
    t.equal(body.data, null)
    t.equal(body.warnings, null)
    t.equal(body.mount_type, 'approle')
    const auth = body.auth!
    t.match(auth.client_token, /^hvs\./)
    t.same(
      {
        policies: auth.policies,
        token_policies: auth.token_policies,
        metadata: auth.metadata,
        lease_duration: auth.lease_duration,
        renewable: auth.renewable,
        token_type: auth.token_type,
        orphan: auth.orphan,
      },
      {
        policies: ['default', policy].sort(),
        token_policies: ['default', policy].sort(),
        metadata: { role_name: 'proxy' },
        lease_duration: 3600,
        renewable: true,
        token_type: 'service',
        orphan: true,
      },
    )
    t.match(auth.entity_id, UUID)
    const self = await lookupSelf(vault, auth.client_token)
    t.same(
      { display_name: self.display_name, path: self.path, meta: self.meta },
      { display_name: mount, path: `auth/${mount}/login`, meta: { role_name: 'proxy' } },
    )
    const again = (
      (
        await vault.request('POST', `auth/${mount}/login`, {
          token: null,
          body: { role_id: roleId, secret_id: secret.secret_id },
        })
      ).json as Envelope
    ).auth!
    t.equal(again.entity_id, auth.entity_id, 'the same role maps to the same entity')
  },
)

void t.test('AppRole login errors and secret_id use limits', async (t) => {
  const vault = await vaultFor(t)
  const mount = await approleMount(vault)
  await vault.call('POST', `auth/${mount}/role/limited`, { token_policies: 'default', secret_id_num_uses: 1 })
  const roleId = ((await vault.call('GET', `auth/${mount}/role/limited/role-id`)).json as Envelope).data!
    .role_id as string
  const secretId = ((await vault.call('POST', `auth/${mount}/role/limited/secret-id`, {})).json as Envelope).data!
    .secret_id as string
  const login = (body: Record<string, unknown>) => vault.request('POST', `auth/${mount}/login`, { token: null, body })

  t.same((await login({ secret_id: secretId })).json, { errors: ['missing role_id'] })
  t.same((await login({ role_id: roleId })).json, { errors: ['missing secret_id'] })
  t.same((await login({ role_id: roleId, secret_id: randomUUID() })).json, { errors: ['invalid role or secret ID'] })
  t.same((await login({ role_id: randomUUID(), secret_id: secretId })).json, { errors: ['invalid role or secret ID'] })
  t.equal((await login({ role_id: roleId, secret_id: secretId })).status, 200)
  const spent = await login({ role_id: roleId, secret_id: secretId })
  t.equal(spent.status, 400)
  t.same(spent.json, { errors: ['invalid role or secret ID'] }, 'a one-use secret_id is gone after one login')
  t.equal((await vault.request('GET', `auth/${mount}/role/nope/role-id`)).status, 404)
})

void t.test('AppRole token renew-self is capped by token_max_ttl with the warning', async (t) => {
  const vault = await vaultFor(t)
  const mount = await approleMount(vault)
  await vault.call('POST', `auth/${mount}/role/short`, { token_policies: 'default', token_ttl: 60, token_max_ttl: 120 })
  const roleId = ((await vault.call('GET', `auth/${mount}/role/short/role-id`)).json as Envelope).data!
    .role_id as string
  const secretId = ((await vault.call('POST', `auth/${mount}/role/short/secret-id`, {})).json as Envelope).data!
    .secret_id as string
  const token = (
    (
      await vault.request('POST', `auth/${mount}/login`, {
        token: null,
        body: { role_id: roleId, secret_id: secretId },
      })
    ).json as Envelope
  ).auth!.client_token
  const renewed = (await vault.request('POST', 'auth/token/renew-self', { token, body: {} })).json as Envelope
  t.equal(renewed.auth!.lease_duration, 60, 'no increment: token_ttl')
  const capped = (await vault.request('POST', 'auth/token/renew-self', { token, body: { increment: '1h' } }))
    .json as Envelope
  const left = capped.auth!.lease_duration
  t.ok(left <= 120 && left >= 118)
  t.same(capped.warnings, [
    `TTL of "1h" exceeded the effective max_ttl of "${left === 120 ? '2m' : `1m${left - 60}s`}"; TTL value is capped accordingly`,
  ])
})

// ---------------------------------------------------------------------------
// Kubernetes

async function kubernetesMount(vault: VaultTarget, extraConfig: Record<string, unknown> = {}): Promise<string> {
  const mount = await vault.enableAuth('kubernetes-t', 'kubernetes')
  await vault.call('POST', `auth/${mount}/config`, {
    kubernetes_host: 'https://kubernetes.invalid:6443',
    ...extraConfig,
  })
  await vault.call('POST', `auth/${mount}/role/app`, {
    bound_service_account_names: 'proxy',
    bound_service_account_namespaces: ['db', 'db-*'],
    token_policies: 'default',
    token_ttl: 600,
  })
  return mount
}

function serviceAccountJwt(namespace: string, name: string, key: KeyObject = stranger.privateKey): string {
  return jwt(
    {
      iss: 'https://kubernetes.default.svc.cluster.local',
      sub: `system:serviceaccount:${namespace}:${name}`,
      aud: ['https://kubernetes.default.svc.cluster.local'],
      exp: now() + 600,
      iat: now(),
      'kubernetes.io': { namespace, serviceaccount: { name, uid: '5c8e9d5e-0d4b-4d5e-9b8f-2b7a4f1e6c3d' } },
    },
    key,
  )
}

void t.test('Kubernetes: config and role validation', async (t) => {
  const vault = await vaultFor(t)
  const mount = await vault.enableAuth('kubernetes-v', 'kubernetes')
  t.same((await vault.request('POST', `auth/${mount}/config`, { body: {} })).json, { errors: ['no host provided'] })
  t.same(
    (await vault.request('POST', `auth/${mount}/role/x`, { body: { bound_service_account_namespaces: 'db' } })).json,
    {
      errors: ['"bound_service_account_names" can not be empty'],
    },
  )
})

void t.test(
  'Kubernetes login: claims checked against the role, metadata and display name',
  { skip: devOnly('Kubernetes login without a TokenReview API') },
  async (t) => {
    const vault = await vaultFor(t)
    const mount = await kubernetesMount(vault)
    const login = (body: Record<string, unknown>) => vault.request('POST', `auth/${mount}/login`, { token: null, body })

    const ok = await login({ role: 'app', jwt: serviceAccountJwt('db-eu', 'proxy') })
    t.equal(ok.status, 200, ok.text)
    const auth = (ok.json as Envelope).auth!
    t.same(auth.metadata, {
      role: 'app',
      service_account_name: 'proxy',
      service_account_namespace: 'db-eu',
      service_account_secret_name: '',
      service_account_uid: '5c8e9d5e-0d4b-4d5e-9b8f-2b7a4f1e6c3d',
    })
    t.equal(auth.lease_duration, 600)
    t.equal((await lookupSelf(vault, auth.client_token)).display_name, `${mount}-db-eu-proxy`)

    const wrongNamespace = await login({ role: 'app', jwt: serviceAccountJwt('other', 'proxy') })
    t.equal(wrongNamespace.status, 403)
    t.same(wrongNamespace.json, { errors: ['1 error occurred:\n\t* namespace not authorized\n\n'] })
    const wrongName = await login({ role: 'app', jwt: serviceAccountJwt('db', 'intruder') })
    t.equal(wrongName.status, 403)
    t.same(wrongName.json, { errors: ['1 error occurred:\n\t* service account name not authorized\n\n'] })
    t.same((await login({ role: 'nope', jwt: serviceAccountJwt('db', 'proxy') })).json, {
      errors: ['invalid role name "nope"'],
    })
    t.same((await login({ role: 'app' })).json, { errors: ['missing jwt'] })
    t.same((await login({ jwt: 'x' })).json, { errors: ['missing role'] })
  },
)

void t.test(
  'Kubernetes login with pem_keys verifies the signature',
  { skip: devOnly('Kubernetes login without a TokenReview API') },
  async (t) => {
    const vault = await vaultFor(t)
    const mount = await kubernetesMount(vault, { pem_keys: [pem(rsa.publicKey)] })
    const login = (token: string) =>
      vault.request('POST', `auth/${mount}/login`, { token: null, body: { role: 'app', jwt: token } })
    t.equal((await login(serviceAccountJwt('db', 'proxy', rsa.privateKey))).status, 200)
    const forged = await login(serviceAccountJwt('db', 'proxy', stranger.privateKey))
    t.equal(forged.status, 403)
    t.same(forged.json, { errors: ['1 error occurred:\n\t* permission denied\n\n'] })
  },
)

// ---------------------------------------------------------------------------
// JWT

async function jwtMount(vault: VaultTarget): Promise<string> {
  const mount = await vault.enableAuth('jwt-t', 'jwt')
  await vault.call('POST', `auth/${mount}/config`, {
    jwt_validation_pubkeys: [pem(rsa.publicKey), pem(ec.publicKey)],
    bound_issuer: 'https://issuer.test',
  })
  await vault.call('POST', `auth/${mount}/role/ci`, {
    role_type: 'jwt',
    user_claim: 'sub',
    bound_audiences: ['vault'],
    bound_claims: { team: 'db' },
    claim_mappings: { team: 'team' },
    token_policies: ['default'],
    token_ttl: 600,
  })
  return mount
}

function ciClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: 'https://issuer.test',
    sub: 'builder',
    aud: 'vault',
    team: 'db',
    iat: now(),
    exp: now() + 300,
    ...overrides,
  }
}

void t.test('JWT: config and role validation', async (t) => {
  const vault = await vaultFor(t)
  const mount = await vault.enableAuth('jwt-v', 'jwt')
  const badKey = await vault.request('POST', `auth/${mount}/config`, {
    body: { jwt_validation_pubkeys: ['not a key'] },
  })
  t.equal(badKey.status, 400)
  t.same(badKey.json, {
    errors: ['error parsing public key: data does not contain any valid RSA or ECDSA public keys'],
  })
  await vault.call('POST', `auth/${mount}/config`, { jwt_validation_pubkeys: [pem(rsa.publicKey)] })
  t.same(
    (await vault.request('POST', `auth/${mount}/role/r`, { body: { role_type: 'jwt', bound_audiences: 'x' } })).json,
    {
      errors: ['a user claim must be defined on the role'],
    },
  )
  t.same(
    (await vault.request('POST', `auth/${mount}/role/r`, { body: { role_type: 'jwt', user_claim: 'sub' } })).json,
    {
      errors: ['must have at least one bound constraint when creating/updating a role'],
    },
  )
  t.same((await vault.request('POST', `auth/${mount}/role/r`, { body: { user_claim: 'sub' } })).json, {
    errors: ["'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified."],
  })
})

void t.test(
  'JWT login: RS256 and ES256 keys, metadata from claim_mappings, display name from user_claim',
  async (t) => {
    const vault = await vaultFor(t)
    const mount = await jwtMount(vault)
    for (const [alg, key] of [
      ['RS256', rsa.privateKey],
      ['ES256', ec.privateKey],
    ] as const) {
      const reply = await vault.request('POST', `auth/${mount}/login`, {
        token: null,
        body: { role: 'ci', jwt: jwt(ciClaims(), key, alg) },
      })
      t.equal(reply.status, 200, `${alg}: ${reply.text}`)
      const auth = (reply.json as Envelope).auth!
      t.same(auth.metadata, { role: 'ci', team: 'db' })
      t.equal((await lookupSelf(vault, auth.client_token)).display_name, `${mount}-builder`)
    }
  },
)

void t.test(
  'JWT login errors: expiry, audience, issuer, signature, bound claims, role and token missing',
  async (t) => {
    const vault = await vaultFor(t)
    const mount = await jwtMount(vault)
    const login = async (body: Record<string, unknown>) => {
      const reply = await vault.request('POST', `auth/${mount}/login`, { token: null, body })
      t.equal(reply.status, 400, reply.text)
      return reply.json
    }
    const as = (claims: Record<string, unknown>, key: KeyObject = rsa.privateKey) => ({
      role: 'ci',
      jwt: jwt(claims, key),
    })
    t.same(await login(as(ciClaims({ exp: now() - 3600, iat: now() - 7200 }))), {
      errors: ['error validating token: invalid expiration time (exp) claim: token is expired'],
    })
    t.same(await login(as(ciClaims({ aud: 'someone-else' }))), {
      errors: [
        'error validating token: invalid audience (aud) claim: audience claim does not match any expected audience',
      ],
    })
    t.same(await login(as(ciClaims({ iss: 'https://elsewhere' }))), {
      errors: ['error validating token: invalid issuer (iss) claim'],
    })
    t.same(await login(as(ciClaims(), stranger.privateKey)), {
      errors: [
        'error validating token: error verifying token signature: no known key successfully validated the token signature',
      ],
    })
    t.same(await login(as(ciClaims({ team: 'web' }))), {
      errors: ['error validating claims: claim "team" does not match any associated bound claim values'],
    })
    t.same(await login({ jwt: jwt(ciClaims(), rsa.privateKey) }), { errors: ['missing role'] })
    t.same(await login({ role: 'nope', jwt: jwt(ciClaims(), rsa.privateKey) }), {
      errors: ['role "nope" could not be found'],
    })
    t.same(await login({ role: 'ci' }), { errors: ['missing token'] })
  },
)
