import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { promisify } from 'node:util'
import t from 'tap'
import { VaultClient, type VaultClientOptions } from '../../src/vault/vault-client.js'

// vault.ca_cert, client_cert, client_key and skip_verify against an https server that requires a
// client certificate, as Vault's listener does with tls_require_and_verify_client_cert.

const run = promisify(execFile)
const dir = await mkdtemp(join(tmpdir(), 'pgvp-vault-tls-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const CNF = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign
[server]
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
`
await writeFile(join(dir, 'openssl.cnf'), CNF)
const openssl = (args: string[]): Promise<unknown> => run('openssl', args, { cwd: dir })
for (const ca of ['ca', 'other-ca']) {
  // prettier-ignore
  await openssl(['req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca', '-newkey', 'rsa:2048', '-nodes',
    '-days', '1', '-subj', `/CN=${ca}`, '-keyout', `${ca}.key`, '-out', `${ca}.crt`])
}
for (const leaf of ['server', 'client']) {
  // prettier-ignore
  await openssl(['req', '-new', '-config', 'openssl.cnf', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=proxy-${leaf}`,
    '-keyout', `${leaf}.key`, '-out', `${leaf}.csr`])
  // prettier-ignore
  await openssl(['x509', '-req', '-in', `${leaf}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', '1',
    '-days', '1', '-extfile', 'openssl.cnf', '-extensions', leaf, '-out', `${leaf}.crt`])
}
const file = (name: string): string => join(dir, name)

const clientNames: string[] = []
const server: Server = createServer(
  {
    key: await readFile(file('server.key')),
    cert: await readFile(file('server.crt')),
    ca: await readFile(file('ca.crt')),
    requestCert: true,
    rejectUnauthorized: true,
  },
  (req, res) => {
    clientNames.push(String((req.socket as TLSSocket).getPeerCertificate().subject?.CN))
    res.writeHead(200, { 'Content-Type': 'application/json' })
    res.end(JSON.stringify({ data: { ttl: 60, renewable: true, type: 'service' } }))
  },
)
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
t.teardown(() => new Promise((resolve) => server.close(resolve)))
const address = `https://127.0.0.1:${(server.address() as AddressInfo).port}`

async function lookup(options: Partial<VaultClientOptions>): Promise<unknown> {
  const client = new VaultClient({ address, skipVerify: false, timeoutMs: 5_000, ...options })
  client.token = 'hvs.x'
  try {
    return await client.lookupSelf()
  } catch (err) {
    return err
  } finally {
    client.close()
  }
}

const mtls = { clientCert: file('client.crt'), clientKey: file('client.key') }

void t.test('ca_cert and a client certificate: verified both ways', async (t) => {
  t.same(await lookup({ caCert: file('ca.crt'), ...mtls }), { ttlSeconds: 60, renewable: true, type: 'service' })
  t.equal(clientNames.at(-1), 'proxy-client', 'the server saw the client certificate')
})

void t.test("without ca_cert, or with another CA, Vault's certificate is not trusted", async (t) => {
  t.match(await lookup({ ...mtls }), {
    failure: 'unreachable',
    message: `Vault is unreachable at ${address}: TLS certificate not trusted (set vault.ca_cert)`,
  })
  t.match(await lookup({ caCert: file('other-ca.crt'), ...mtls }), {
    failure: 'unreachable',
    message: /TLS certificate not trusted/,
  })
})

void t.test('skip_verify trusts any certificate (still sending the client certificate)', async (t) => {
  t.match(await lookup({ skipVerify: true, ...mtls }), { ttlSeconds: 60 })
})

void t.test('without a client certificate the server refuses the handshake', async (t) => {
  const before = clientNames.length
  t.match(await lookup({ caCert: file('ca.crt') }), { failure: 'unreachable' })
  t.equal(clientNames.length, before, 'no request was answered')
})
