/**
 * A throwaway PostgreSQL 15 cluster for integration tests.
 *
 * Each cluster lives in its own short temp dir (Unix socket paths must stay
 * under ~100 chars), listens on a free port on 127.0.0.1, serves TLS with a
 * CA generated at test time, and is seeded with one login role per upstream
 * auth method the proxy has to speak (scram, md5, cleartext password, client
 * certificate) plus the owner roles those logins act as.
 */
import { execFile, execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, rmSync } from 'node:fs'
import { appendFile, chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import type { Test } from 'tap'
import { freePort } from './free-port.js'

const execFileAsync = promisify(execFile)

/** Where Debian/Ubuntu's postgresql-15 package installs the server binaries. */
const PG_BIN = process.env.PGVP_PG_BIN ?? '/usr/lib/postgresql/15/bin'
const HOST = '127.0.0.1'
const DATABASE = 'appdb'
const OWNER_ROLE = 'app_owner'
const MIXED_CASE_OWNER_ROLE = 'App Owner'
/** Role names double as pg_hba.conf user fields and, for cert_user, the client cert CN. */
const ROLES = {
  scram: 'scram_user',
  md5: 'md5_user',
  password: 'password_user',
  cert: 'cert_user',
  nomember: 'nomember_user',
} as const
/** A parallel test file can grab our "free" port before postgres binds it. */
const START_ATTEMPTS = 4

export interface Login {
  user: string
  password: string
}

export interface TlsFiles {
  /** CA that signed the server and client certificates. */
  caFile: string
  /** An unrelated self-signed CA: verifying the server against it must fail. */
  wrongCaFile: string
  /** The server certificate's CN / DNS SAN (it also carries IP SAN 127.0.0.1). */
  serverName: 'localhost'
  /** Client certificate with CN = users.cert.user, for `cert` auth. */
  clientCertFile: string
  clientKeyFile: string
}

export interface PgCluster {
  host: string
  port: number
  socketDir: string
  dataDir: string
  logFile: string
  tls: TlsFiles
  database: string
  ownerRole: string
  mixedCaseOwnerRole: string
  /** Every role except `nomember` is a member of both owner roles. `cert.password` is unused by the server. */
  users: { scram: Login; md5: Login; password: Login; cert: Login; nomember: Login }
  /** Runs SQL as superuser `postgres` over the Unix socket (trust auth); `database` defaults to appdb. */
  query<T = Record<string, unknown>>(sql: string, params?: unknown[], database?: string): Promise<T[]>
  /** Fast shutdown, then removes the temp dir. Idempotent. */
  stop(): Promise<void>
}

export interface StartOptions {
  /** Extra postgresql.conf lines; they override the defaults except listen_addresses, port, unix_socket_directories. */
  extraConf?: string[]
}

interface Dirs {
  base: string
  data: string
  socket: string
  certs: string
  log: string
}

/** Starts a cluster for a tap test and stops it in t's teardown. */
export async function clusterFor(t: Test, options?: StartOptions): Promise<PgCluster> {
  const cluster = await startCluster(options)
  t.teardown(() => cluster.stop())
  return cluster
}

export async function startCluster(options: StartOptions = {}): Promise<PgCluster> {
  assertBinaries()
  const owner = serverOwner()
  installExitHooks()
  const base = await mkdtemp(path.join(os.tmpdir(), 'pgvp-'))
  const dirs: Dirs = {
    base,
    data: path.join(base, 'data'),
    socket: path.join(base, 'sock'),
    certs: path.join(base, 'certs'),
    log: path.join(base, 'postgres.log'),
  }
  // From here on the exit hooks clean up after us, even mid-start.
  running.set(dirs.base, dirs.data)
  try {
    await mkdir(dirs.socket)
    await mkdir(dirs.certs)
    // The server user must be able to create the data dir and write the socket and log.
    await handOver(owner, [dirs.base, dirs.socket])
    // Key generation and initdb are the slow parts and independent of each other.
    const [tls] = await Promise.all([
      generateTls(dirs.certs, ROLES.cert).then(async (files) => {
        await handOver(owner, await listFiles(dirs.certs))
        await handOver(owner, [dirs.certs])
        return files
      }),
      initdb(dirs),
    ])
    await writeOwned(owner, path.join(dirs.data, 'pg_hba.conf'), hbaConf())
    await appendFile(path.join(dirs.data, 'postgresql.conf'), "\ninclude 'pgvp.conf'\n")
    const port = await startWithRetry(owner, dirs, tls, options.extraConf ?? [])
    const cluster = makeCluster(dirs, port, tls)
    await bootstrap(cluster)
    return cluster
  } catch (err) {
    // A failed start leaves neither a server nor a temp dir behind; report the original error.
    await stopCluster(dirs).catch(() => undefined)
    throw err
  }
}

function makeCluster(dirs: Dirs, port: number, tls: TlsFiles): PgCluster {
  const login = (user: string): Login => ({ user, password: randomBytes(16).toString('hex') })
  let stopping: Promise<void> | undefined
  return {
    host: HOST,
    port,
    socketDir: dirs.socket,
    dataDir: dirs.data,
    logFile: dirs.log,
    tls,
    database: DATABASE,
    ownerRole: OWNER_ROLE,
    mixedCaseOwnerRole: MIXED_CASE_OWNER_ROLE,
    users: {
      scram: login(ROLES.scram),
      md5: login(ROLES.md5),
      password: login(ROLES.password),
      cert: login(ROLES.cert),
      nomember: login(ROLES.nomember),
    },
    query: (sql, params, database) => superuserQuery(dirs.socket, port, database ?? DATABASE, sql, params),
    stop: () => (stopping ??= stopCluster(dirs)),
  }
}

// ---------------------------------------------------------------------------
// Running server binaries (as `postgres` when we are root)

interface ServerOwner {
  uid: number
  gid: number
}

let cachedOwner: ServerOwner | null | undefined

/** initdb and postgres refuse to run as root; CI runs as root, so then they run as `postgres`. */
function serverOwner(): ServerOwner | null {
  if (cachedOwner !== undefined) return cachedOwner
  if (process.getuid?.() !== 0) return (cachedOwner = null)
  try {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim())
    return (cachedOwner = { uid: id('-u'), gid: id('-g') })
  } catch {
    throw new Error(
      'Running as root, but there is no `postgres` OS user to run the PostgreSQL server as ' +
        '(initdb/postgres refuse to run as root). Install it with `apt-get install -y postgresql-15`, ' +
        'or run the tests as a non-root user.',
    )
  }
}

const RUNUSER = ['/usr/sbin/runuser', '/sbin/runuser', '/usr/bin/runuser'].find((p) => existsSync(p))
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p))

/** The argv that runs a PostgreSQL binary, wrapped to drop to `postgres` when we are root. */
function pgCommand(owner: ServerOwner | null, binary: string, args: string[]): [string, string[]] {
  const file = path.join(PG_BIN, binary)
  if (owner === null) return [file, args]
  if (RUNUSER !== undefined) return [RUNUSER, ['-u', 'postgres', '--', file, ...args]]
  if (SETPRIV !== undefined) {
    return [SETPRIV, [`--reuid=${owner.uid}`, `--regid=${owner.gid}`, '--init-groups', '--', file, ...args]]
  }
  throw new Error('Running as root, but neither runuser nor setpriv (util-linux) is installed to drop to `postgres`.')
}

/** PG* variables from the caller's shell (PGPORT, PGDATA, ...) must not leak into our cluster. */
function serverEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('PG')))
  return { ...env, LC_ALL: 'C', LANG: 'C' }
}

async function runPg(owner: ServerOwner | null, cwd: string, binary: string, args: string[]): Promise<void> {
  const [file, argv] = pgCommand(owner, binary, args)
  // cwd: the server user cannot chdir into e.g. a root-owned repo checkout.
  await execFileAsync(file, argv, { cwd, env: serverEnv() })
}

function assertBinaries(): void {
  const missing = ['initdb', 'postgres', 'pg_ctl'].map((b) => path.join(PG_BIN, b)).filter((p) => !existsSync(p))
  if (missing.length > 0) {
    throw new Error(
      `PostgreSQL 15 server binaries not found: ${missing.join(', ')}. ` +
        'Install them with `apt-get install -y postgresql-15` (Debian/Ubuntu, PGDG repo if needed), ' +
        'or point PGVP_PG_BIN at a directory containing initdb, postgres and pg_ctl.',
    )
  }
}

async function handOver(owner: ServerOwner | null, paths: string[]): Promise<void> {
  if (owner === null) return
  await Promise.all(paths.map((p) => chown(p, owner.uid, owner.gid)))
}

async function writeOwned(owner: ServerOwner | null, file: string, content: string): Promise<void> {
  await writeFile(file, content, { mode: 0o600 })
  await handOver(owner, [file])
}

async function listFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).map((name) => path.join(dir, name))
}

// ---------------------------------------------------------------------------
// initdb, configuration, start/stop

async function initdb(dirs: Dirs): Promise<void> {
  // prettier-ignore
  await runPg(serverOwner(), dirs.base, 'initdb', [
    '-D', dirs.data,
    '-U', 'postgres',
    '--auth-local=trust',
    '--auth-host=scram-sha-256',
    '-E', 'UTF8',
    '--locale=C',
    '--no-sync', // throwaway cluster: skip fsync of the fresh data dir
    '--no-instructions',
  ])
}

function hbaConf(): string {
  // First match wins. hostssl and host lines both match TLS connections.
  return [
    'local all all trust',
    `hostssl all ${ROLES.cert} 127.0.0.1/32 cert`,
    `host all ${ROLES.md5} 127.0.0.1/32 md5`,
    `host all ${ROLES.password} 127.0.0.1/32 password`,
    'host all all 127.0.0.1/32 scram-sha-256',
    '',
  ].join('\n')
}

function serverConf(dirs: Dirs, tls: TlsFiles, port: number, extraConf: string[]): string {
  return [
    'ssl = on',
    `ssl_cert_file = '${path.join(dirs.certs, 'server.crt')}'`,
    `ssl_key_file = '${path.join(dirs.certs, 'server.key')}'`,
    // Needed for `cert` auth: client certificates are verified against this CA.
    `ssl_ca_file = '${tls.caFile}'`,
    "password_encryption = 'scram-sha-256'",
    'max_connections = 200', // benchmarks open many sessions
    // Throwaway data: durability only costs time.
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    'logging_collector = off', // pg_ctl -l captures the log
    ...extraConf,
    // Last, so extraConf cannot make the server unreachable at the advertised host/port/socketDir.
    `listen_addresses = '${HOST}'`,
    `port = ${port}`,
    `unix_socket_directories = '${dirs.socket}'`,
    '',
  ].join('\n')
}

/** Starts the server, retrying on a new port if another process took ours meanwhile. */
async function startWithRetry(
  owner: ServerOwner | null,
  dirs: Dirs,
  tls: TlsFiles,
  extraConf: string[],
): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    await writeOwned(owner, path.join(dirs.data, 'pgvp.conf'), serverConf(dirs, tls, port, extraConf))
    const logOffset = await fileSize(dirs.log)
    try {
      // -w waits until the server accepts connections; pg_ctl daemonizes postgres.
      await runPg(owner, dirs.base, 'pg_ctl', ['-D', dirs.data, '-l', dirs.log, '-w', '-t', '60', 'start'])
      return port
    } catch (err) {
      const log = (await readFile(dirs.log, 'utf8').catch(() => '')).slice(logOffset)
      const portTaken = /could not bind|Address already in use/i.test(log)
      if (!portTaken || attempt >= START_ATTEMPTS) {
        throw new Error(`PostgreSQL failed to start (attempt ${attempt}). Server log:\n${log}`, { cause: err })
      }
    }
  }
}

async function fileSize(file: string): Promise<number> {
  return stat(file).then(
    (s) => s.size,
    () => 0,
  )
}

async function stopCluster(dirs: Dirs): Promise<void> {
  try {
    if (existsSync(path.join(dirs.data, 'postmaster.pid'))) {
      // fast: roll back and disconnect open sessions instead of waiting for them.
      await runPg(serverOwner(), dirs.base, 'pg_ctl', ['-D', dirs.data, '-m', 'fast', '-w', '-t', '60', 'stop'])
    }
  } finally {
    running.delete(dirs.base)
    await rm(dirs.base, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------
// Last-resort cleanup: t.teardown does not run if the process dies or is
// killed, and an orphaned postmaster would outlive the test run.

/** base dir -> data dir of every cluster that is (possibly) still running. */
const running = new Map<string, string>()
let exitHooksInstalled = false

function stopAllSync(): void {
  for (const [base, data] of running) {
    try {
      const [file, argv] = pgCommand(serverOwner(), 'pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
      execFileSync(file, argv, { cwd: os.tmpdir(), env: serverEnv(), stdio: 'ignore' })
    } catch {
      // Already stopped, or nothing more we can do while exiting.
    }
    rmSync(base, { recursive: true, force: true })
    running.delete(base)
  }
}

function onSignal(signal: NodeJS.Signals): void {
  stopAllSync()
  process.removeListener('SIGINT', onSignal)
  process.removeListener('SIGTERM', onSignal)
  // Re-raise so the process still dies the way the sender intended.
  process.kill(process.pid, signal)
}

function installExitHooks(): void {
  if (exitHooksInstalled) return
  exitHooksInstalled = true
  process.on('exit', stopAllSync)
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}

// ---------------------------------------------------------------------------
// Roles and objects

async function superuserQuery<T>(
  socketDir: string,
  port: number,
  database: string,
  sql: string,
  params?: unknown[],
): Promise<T[]> {
  const client = new pg.Client({ host: socketDir, port, user: 'postgres', database })
  await client.connect()
  try {
    const result = await client.query(sql, params)
    return result.rows as T[]
  } finally {
    await client.end()
  }
}

async function bootstrap(cluster: PgCluster): Promise<void> {
  const { users } = cluster
  const client = new pg.Client({ host: cluster.socketDir, port: cluster.port, user: 'postgres', database: 'postgres' })
  await client.connect()
  try {
    const owner = client.escapeIdentifier(OWNER_ROLE)
    const mixedOwner = client.escapeIdentifier(MIXED_CASE_OWNER_ROLE)
    const pw = (login: Login) => client.escapeLiteral(login.password)
    const statements = [
      `CREATE ROLE ${owner} NOLOGIN`,
      `CREATE ROLE ${mixedOwner} NOLOGIN`,
      `CREATE ROLE ${users.scram.user} LOGIN PASSWORD ${pw(users.scram)}`,
      // The md5 hba method only does an MD5 exchange if the stored verifier is MD5.
      "SET password_encryption = 'md5'",
      `CREATE ROLE ${users.md5.user} LOGIN PASSWORD ${pw(users.md5)}`,
      'RESET password_encryption',
      `CREATE ROLE ${users.password.user} LOGIN PASSWORD ${pw(users.password)}`,
      `CREATE ROLE ${users.cert.user} LOGIN`,
      `GRANT ${owner}, ${mixedOwner} TO ${users.scram.user}, ${users.md5.user}, ${users.password.user}, ${users.cert.user}`,
      `CREATE ROLE ${users.nomember.user} LOGIN PASSWORD ${pw(users.nomember)}`,
      // Separate statements: CREATE DATABASE cannot run in a multi-statement implicit transaction.
      `CREATE DATABASE ${client.escapeIdentifier(DATABASE)} OWNER ${owner}`,
    ]
    for (const sql of statements) await client.query(sql)
  } finally {
    await client.end()
  }
  // PG15 no longer grants CREATE on public to everyone; make it explicit for the owner role.
  await cluster.query(`GRANT USAGE, CREATE ON SCHEMA public TO ${pg.escapeIdentifier(OWNER_ROLE)}`)
}

// ---------------------------------------------------------------------------
// TLS material (openssl CLI)

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
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
`

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

/** Self-signed CA `<name>.crt` / `<name>.key`. */
async function makeCa(dir: string, name: string, cn: string): Promise<void> {
  // prettier-ignore
  await openssl(dir, [
    'req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca_ext',
    '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '2',
    '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.crt`,
  ])
}

/** Leaf `<name>.crt` / `<name>.key` signed by ca.crt. */
async function issue(dir: string, name: string, cn: string, extensions: string): Promise<void> {
  // prettier-ignore
  await openssl(dir, [
    'req', '-new', '-config', 'openssl.cnf',
    '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`,
  ])
  // prettier-ignore
  await openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key',
    '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '2', '-sha256',
    '-extfile', 'openssl.cnf', '-extensions', extensions, '-out', `${name}.crt`,
  ])
}

async function generateTls(dir: string, clientCn: string): Promise<TlsFiles> {
  await writeFile(path.join(dir, 'openssl.cnf'), OPENSSL_CNF)
  await Promise.all([makeCa(dir, 'ca', 'pg-vault-proxy test CA'), makeCa(dir, 'wrong-ca', 'unrelated test CA')])
  await Promise.all([issue(dir, 'server', 'localhost', 'server_ext'), issue(dir, 'client', clientCn, 'client_ext')])
  // postgres refuses a server key readable by group/others when it owns the file.
  await Promise.all(['ca', 'wrong-ca', 'server', 'client'].map((n) => chmod(path.join(dir, `${n}.key`), 0o600)))
  return {
    caFile: path.join(dir, 'ca.crt'),
    wrongCaFile: path.join(dir, 'wrong-ca.crt'),
    serverName: 'localhost',
    clientCertFile: path.join(dir, 'client.crt'),
    clientKeyFile: path.join(dir, 'client.key'),
  }
}
