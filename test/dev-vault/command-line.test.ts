/**
 * `npm run dev-vault` (dev-vault/main.ts) with the flags that choose what it answers as: flavor,
 * the server's lease TTLs, the agent-style listener, TLS; and the refusals of bad flags.
 */
import { spawn } from 'node:child_process'
import { rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { testCaFor } from '../support/test-ca.js'

interface Started {
  address: string
  output: string
}

/** Starts the dev Vault on a free port; resolves once it prints its address. Stopped in teardown. */
function start(t: Test, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Started> {
  const child = spawn(process.execPath, ['--import=tsx', 'dev-vault/main.ts', '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGTERM')
  })
  let output = ''
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk
      const address = /Api Address: (\S+)/.exec(output)?.[1]
      if (address && output.includes('Root Token:')) resolve({ address, output })
    })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
    child.on('exit', (code) => reject(new Error(`dev-vault exited with ${code}: ${output}`)))
  })
}

/** Runs the dev Vault with flags it must refuse; resolves with its exit code and stderr. */
function refused(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--import=tsx', 'dev-vault/main.ts', '--port', '0', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stderr })))
}

void t.test('--flavor, DEV_VAULT_FLAVOR, --max-lease-ttl and --require-request-header', async (t) => {
  const bao = await start(t, ['--max-lease-ttl', '8760h', '--require-request-header'], { DEV_VAULT_FLAVOR: 'openbao' })
  t.match(bao.output, /Flavor: openbao/)
  const headers = { 'X-Vault-Token': 'root', 'X-Vault-Request': 'true' }
  const health = (await (await fetch(`${bao.address}/v1/sys/health`, { headers })).json()) as { version: string }
  t.match(health.version, /^2\./, 'answers as OpenBao')
  const tune = (await (await fetch(`${bao.address}/v1/sys/auth/token/tune`, { headers })).json()) as {
    data: { max_lease_ttl: number }
  }
  t.equal(tune.data.max_lease_ttl, 8760 * 3600)
  const bare = await fetch(`${bao.address}/v1/sys/health`)
  t.equal(bare.status, 412, 'without X-Vault-Request')

  const vault = await start(t, ['--flavor', 'vault-1.16'], { DEV_VAULT_FLAVOR: 'openbao' })
  t.match(vault.output, /Flavor: vault-1\.16/, 'the flag wins over the variable')
})

void t.test('--tls-cert-file and --tls-key-file serve https', async (t) => {
  const ca = await testCaFor(t)
  const dir = os.tmpdir()
  const certFile = path.join(dir, `dev-vault-${process.pid}-server.crt`)
  const keyFile = path.join(dir, `dev-vault-${process.pid}-server.key`)
  await writeFile(certFile, ca.server.cert)
  await writeFile(keyFile, ca.server.key, { mode: 0o600 })
  t.teardown(() => Promise.all([rm(certFile, { force: true }), rm(keyFile, { force: true })]))
  const started = await start(t, ['--tls-cert-file', certFile, '--tls-key-file', keyFile])
  t.match(started.address, /^https:\/\/127\.0\.0\.1:\d+$/)
  const status = await new Promise<number>((resolve, reject) => {
    https
      .get(`${started.address}/v1/sys/health`, { ca: ca.caCert }, (response) => {
        response.resume()
        resolve(response.statusCode ?? 0)
      })
      .on('error', reject)
  })
  t.equal(status, 200)
})

void t.test('bad flags: exit 1 with what is wrong', async (t) => {
  const cases: [string[], RegExp][] = [
    [['--flavor', 'vault-2'], /--flavor must be one of vault-1\.17, vault-1\.16, openbao, not vault-2/],
    [['--max-lease-ttl', 'soon'], /--max-lease-ttl must be a duration such as 768h or 3600, not soon/],
    [['--max-lease-ttl', '1h'], /--default-lease-ttl cannot be greater than --max-lease-ttl/],
    [['--tls-cert-file', 'x.crt'], /--tls-cert-file and --tls-key-file go together/],
    [['--tls-cert-file', '/nonexistent.crt', '--tls-key-file', '/nonexistent.key'], /cannot read the TLS certificate/],
  ]
  for (const [args, message] of cases) {
    const { code, stderr } = await refused(args)
    t.equal(code, 1, args.join(' '))
    t.match(stderr, message)
  }
})
