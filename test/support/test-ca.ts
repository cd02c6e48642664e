/**
 * A certificate authority made at test time with the openssl CLI, for a dev Vault served over
 * TLS and for client certificates (the cert auth method): a CA, a server certificate for
 * 127.0.0.1 and localhost, client certificates with a given common name, and an unrelated CA
 * whose client certificates nobody trusts. Everything lives in a temp dir removed in teardown.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { Test } from 'tap'

const execFileAsync = promisify(execFile)

const OPENSSL_CNF = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`

/** A certificate and its private key, PEM. */
export interface KeyPair {
  cert: string
  key: string
}

export interface TestCa {
  /** The CA certificate, PEM: what a client trusts, or what a cert auth role names. */
  caCert: string
  /** For the dev Vault's listener: CN localhost, SANs localhost and 127.0.0.1. */
  server: KeyPair
  /** A client certificate (clientAuth) signed by this CA. */
  client(commonName: string): Promise<KeyPair>
  /** A client certificate signed by a CA nobody trusts. */
  untrustedClient(commonName: string): Promise<KeyPair>
}

async function openssl(cwd: string, args: string[]): Promise<void> {
  try {
    await execFileAsync('openssl', args, { cwd })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('The `openssl` CLI is needed to generate test certificates: `apt-get install -y openssl`.', {
        cause: err,
      })
    }
    throw err
  }
}

/** P-256 keys: quick to make, and what Vault's own test certificates mostly use. */
const NEW_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']

async function makeCa(dir: string, name: string, commonName: string): Promise<void> {
  // prettier-ignore
  await openssl(dir, [
    'req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca_ext', ...NEW_KEY,
    '-sha256', '-days', '2', '-subj', `/CN=${commonName}`, '-keyout', `${name}.key`, '-out', `${name}.crt`,
  ])
}

async function issue(dir: string, ca: string, commonName: string, extensions: string): Promise<KeyPair> {
  const name = `${extensions}-${randomBytes(4).toString('hex')}`
  // prettier-ignore
  await openssl(dir, [
    'req', '-new', '-config', 'openssl.cnf', ...NEW_KEY,
    '-subj', `/CN=${commonName}`, '-keyout', `${name}.key`, '-out', `${name}.csr`,
  ])
  // prettier-ignore
  await openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`,
    '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '2', '-sha256',
    '-extfile', 'openssl.cnf', '-extensions', extensions, '-out', `${name}.crt`,
  ])
  const [cert, key] = await Promise.all([
    readFile(path.join(dir, `${name}.crt`), 'utf8'),
    readFile(path.join(dir, `${name}.key`), 'utf8'),
  ])
  return { cert, key }
}

/** A fresh CA for one test file (or test), removed in t's teardown. */
export async function testCaFor(t: Test): Promise<TestCa> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgvp-test-ca-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(path.join(dir, 'openssl.cnf'), OPENSSL_CNF)
  await Promise.all([makeCa(dir, 'ca', 'dev Vault test CA'), makeCa(dir, 'other-ca', 'untrusted test CA')])
  const server = await issue(dir, 'ca', 'localhost', 'server_ext')
  return {
    caCert: await readFile(path.join(dir, 'ca.crt'), 'utf8'),
    server,
    client: (commonName) => issue(dir, 'ca', commonName, 'client_ext'),
    untrustedClient: (commonName) => issue(dir, 'other-ca', commonName, 'client_ext'),
  }
}
