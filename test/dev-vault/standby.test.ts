/**
 * A standby dev Vault (fault switches standby, standbyForwarding, activeAddress): sys/health
 * answers as a standby; logical requests are served as if forwarded, or, without forwarding,
 * answer 307 to the active node (http/handler.go forwardRequest and respondStandby), or 503 when
 * no active node is known. Clients that follow redirects (fetch, node-vault) reach the active one.
 */
import nodeVault from 'node-vault'
import t from 'tap'
import { devOnly, vaultFor } from '../support/vault-target.js'

const STANDBY = devOnly('the standby switches')

void t.test('without forwarding: 307 to the active node, method, path and query kept', { skip: STANDBY }, async (t) => {
  const active = await vaultFor(t)
  const standby = await vaultFor(t)
  await active.call('POST', 'secret/data/shared', { data: { where: 'active' } })
  await standby.setFaults({ standby: true, standbyForwarding: false, activeAddress: active.address })

  const health = await standby.request('GET', 'sys/health', { token: null })
  t.equal(health.status, 429, 'health answers as a standby')
  t.equal((health.json as { standby: boolean }).standby, true)
  t.equal((await standby.request('GET', 'sys/health?standbyok=true', { token: null })).status, 200)
  t.equal((await standby.request('GET', 'sys/seal-status', { token: null })).status, 200, 'seal status is local')

  const redirect = await fetch(`${standby.address}/v1/secret/data/shared?version=1`, {
    headers: { 'X-Vault-Token': active.token },
    redirect: 'manual',
  })
  t.equal(redirect.status, 307)
  t.equal(redirect.headers.get('location'), `${active.address}/v1/secret/data/shared?version=1`)
  t.equal(await redirect.text(), '', 'no body')

  // fetch follows a 307 with the same method and body: the write lands on the active node.
  const write = await fetch(`${standby.address}/v1/secret/data/through-standby`, {
    method: 'POST',
    headers: { 'X-Vault-Token': active.token, 'Content-Type': 'application/json' },
    body: JSON.stringify({ data: { via: 'redirect' } }),
  })
  t.equal(write.status, 200)
  const landed = (await active.call('GET', 'secret/data/through-standby')).json as { data: { data: unknown } }
  t.same(landed.data.data, { via: 'redirect' })

  const client = nodeVault({ endpoint: standby.address, token: active.token })
  const read = (await client.read('secret/data/shared')) as { data: { data: unknown } }
  t.same(read.data.data, { where: 'active' }, 'node-vault follows the redirect')
})

void t.test(
  'with forwarding (the default) requests are served; a client may refuse forwarding',
  { skip: STANDBY },
  async (t) => {
    const active = await vaultFor(t)
    const standby = await vaultFor(t)
    await standby.setFaults({ standby: true, activeAddress: active.address })
    t.equal((await standby.request('GET', 'auth/token/lookup-self')).status, 200, 'forwarded requests succeed')
    const noForward = await fetch(`${standby.address}/v1/auth/token/lookup-self`, {
      headers: { 'X-Vault-Token': standby.token, 'X-Vault-No-Request-Forwarding': 'true' },
      redirect: 'manual',
    })
    t.equal(noForward.status, 307)
    t.equal(noForward.headers.get('location'), `${active.address}/v1/auth/token/lookup-self`)
  },
)

void t.test('no active node known: 503 no active Vault instance found', { skip: STANDBY }, async (t) => {
  const standby = await vaultFor(t)
  await standby.setFaults({ standby: true, standbyForwarding: false })
  const reply = await standby.request('GET', 'auth/token/lookup-self')
  t.equal(reply.status, 503)
  t.equal(reply.text, '{"errors":["no active Vault instance found"]}\n')
  await standby.setFaults({ sealed: true })
  t.same((await standby.request('GET', 'auth/token/lookup-self')).json, { errors: ['Vault is sealed'] }, 'sealed first')

  const bad = await standby.request('POST', 'sys/dev/faults', { body: { activeAddress: 'not a url' } })
  t.equal(bad.status, 400)
  t.same(bad.json, { errors: ['activeAddress must be "" or an address such as http://127.0.0.1:8200'] })
})
