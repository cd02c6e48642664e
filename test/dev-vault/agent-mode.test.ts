/**
 * Agent-style mode (`requireRequestHeader`): the dev Vault answers as a Vault Agent or Vault Proxy
 * listener with `require_request_header = true` (command/agent.go verifyRequestHeader): 412
 * `missing "X-Vault-Request" header` unless the request carries exactly one `X-Vault-Request: true`.
 */
import nodeVault from 'node-vault'
import t from 'tap'
import { devOnly, vaultFor } from '../support/vault-target.js'

const AGENT = devOnly('the agent-style listener')
const MISSING = '{"errors":["missing \\"X-Vault-Request\\" header"]}\n'

void t.test('without X-Vault-Request: 412 on every path, health included', { skip: AGENT }, async (t) => {
  const vault = await vaultFor(t, undefined, { requireRequestHeader: true })
  for (const path of ['auth/token/lookup-self', 'sys/health', 'nomount/x']) {
    const reply = await fetch(`${vault.address}/v1/${path}`, { headers: { 'X-Vault-Token': vault.token } })
    t.equal(reply.status, 412, path)
    t.equal(reply.headers.get('content-type'), 'application/json')
    t.equal(await reply.text(), MISSING)
  }
  const wrongValue = await fetch(`${vault.address}/v1/auth/token/lookup-self`, {
    headers: { 'X-Vault-Token': vault.token, 'X-Vault-Request': 'yes' },
  })
  t.equal(wrongValue.status, 412, 'the value must be "true"')
  const twice = new Headers({ 'X-Vault-Token': vault.token })
  twice.append('X-Vault-Request', 'true')
  twice.append('X-Vault-Request', 'true')
  t.equal((await fetch(`${vault.address}/v1/auth/token/lookup-self`, { headers: twice })).status, 412, 'one header')

  const ok = await fetch(`${vault.address}/v1/auth/token/lookup-self`, {
    headers: { 'X-Vault-Token': vault.token, 'X-Vault-Request': 'true' },
  })
  t.equal(ok.status, 200)
  t.equal(
    (await vault.call('GET', 'auth/token/lookup-self')).status,
    200,
    'the test helpers send it, as Vault’s Go client does',
  )
})

void t.test('node-vault sends no X-Vault-Request unless asked to', { skip: AGENT }, async (t) => {
  const vault = await vaultFor(t, undefined, { requireRequestHeader: true })
  const client = nodeVault({ endpoint: vault.address, token: vault.token })
  const err = await client.tokenLookupSelf().then(
    () => undefined,
    (e: unknown) => e as { message: string; response?: { statusCode: number } },
  )
  t.equal(err?.response?.statusCode, 412)
  t.equal(err?.message, 'missing "X-Vault-Request" header')
  // Its generated methods drop per-call headers; client.request passes them on.
  const looked = (await client.request({
    path: '/auth/token/lookup-self',
    method: 'GET',
    headers: { 'X-Vault-Request': 'true' },
  })) as { data: { id: string } }
  t.equal(looked.data.id, vault.token, 'with the header on client.request')
})

void t.test('a dev Vault not in agent mode ignores the header', async (t) => {
  const vault = await vaultFor(t)
  const reply = await fetch(`${vault.address}/v1/auth/token/lookup-self`, { headers: { 'X-Vault-Token': vault.token } })
  t.equal(reply.status, 200)
})
