import { statSync } from 'node:fs'
import { chmod, chown, mkdir, mkdtemp, rm, stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t from 'tap'
import { parseConfig } from '../../src/config/load-config.js'
import { createLogger } from '../../src/ops/logger.js'
import { createProxyServer } from '../../src/proxy/create-proxy-server.js'
import { listenUnixSocket, prepareSocketDir, socketDirMode } from '../../src/proxy/unix-socket.js'

const base = await mkdtemp(join(tmpdir(), 'pgvp-unix-'))
t.teardown(() => rm(base, { recursive: true, force: true }))

function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n'))
        if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { logger: createLogger('debug', sink), lines }
}

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o7777

/** Listens on `path` and records the socket file's mode when 'listening' fires, before anything else can run. */
async function modeAtListening(path: string, socketMode: number): Promise<{ atListening: number; server: Server }> {
  const server = createServer()
  let atListening = -1
  server.once('listening', () => (atListening = statSync(path).mode & 0o777))
  await listenUnixSocket(server, path, socketMode)
  return { atListening, server }
}

void t.test('the socket file is created with socket_mode, not chmod-ed afterwards', async (t) => {
  const previous = process.umask(0o022)
  t.teardown(() => void process.umask(previous))
  for (const socketMode of [0o700, 0o770, 0o600]) {
    const path = join(base, `.s.PGSQL.${socketMode.toString(8)}`)
    const { atListening, server } = await modeAtListening(path, socketMode)
    t.equal(atListening.toString(8), socketMode.toString(8), `mode ${socketMode.toString(8)} from the first instant`)
    t.equal(process.umask().toString(8), '22', 'the process umask is restored')
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  // A narrow process umask does not narrow a deliberately wider socket_mode either.
  process.umask(0o077)
  const path = join(base, '.s.PGSQL.wide')
  const { atListening, server } = await modeAtListening(path, 0o770)
  t.equal(atListening.toString(8), '770')
  await new Promise<void>((resolve) => server.close(() => resolve()))
})

void t.test('a socket a live process still answers on is not replaced', async (t) => {
  const path = join(base, '.s.PGSQL.live')
  const live = createServer()
  await listenUnixSocket(live, path, 0o700)
  await t.rejects(listenUnixSocket(createServer(), path, 0o700), /in use by another process/)
  await new Promise<void>((resolve) => live.close(() => resolve()))
})

void t.test('socket_dir is created with its mode from the start, parents included', async (t) => {
  const previous = process.umask(0o022)
  t.teardown(() => void process.umask(previous))
  const { logger, lines } = capturingLogger()
  const dir = join(base, 'made', 'nested')
  await prepareSocketDir(dir, 0o700, logger)
  t.equal((await modeOf(dir)).toString(8), '700')
  t.equal((await modeOf(join(base, 'made'))).toString(8), '700', 'the parent the proxy made too')
  const shared = join(base, 'shared')
  await prepareSocketDir(shared, 0o770, logger)
  t.equal((await modeOf(shared)).toString(8), '710', 'search for the group that may connect, no listing')
  t.equal(socketDirMode(0o777).toString(8), '711')
  t.same(lines, [], 'nothing to warn about')
})

void t.test('an existing socket_dir: private is fine, writable by others is warned about', async (t) => {
  const { logger, lines } = capturingLogger()
  const own = join(base, 'own')
  await mkdir(own, { mode: 0o755 })
  await chmod(own, 0o755)
  await prepareSocketDir(own, 0o700, logger)
  t.equal((await modeOf(own)).toString(8), '755', 'an existing directory is not changed')
  t.same(lines, [])

  const open = join(base, 'open')
  await mkdir(open)
  await chmod(open, 0o777)
  await prepareSocketDir(open, 0o700, logger)
  t.match(lines.at(-1), { level: 40, socketDir: open, mode: '0777', msg: /can replace the socket/ })

  const sticky = join(base, 'sticky')
  await mkdir(sticky)
  await chmod(sticky, 0o1777)
  await prepareSocketDir(sticky, 0o700, logger)
  t.match(lines.at(-1), { level: 40, mode: '1777', msg: /sticky/ })
})

const root = process.geteuid?.() === 0
void t.test(
  'a socket_dir owned by another user is refused',
  { skip: root ? false : 'needs root to chown' },
  async (t) => {
    const { logger } = capturingLogger()
    const theirs = join(base, 'theirs')
    await mkdir(theirs, { mode: 0o700 })
    await chown(theirs, 65534, 65534)
    await t.rejects(prepareSocketDir(theirs, 0o700, logger), /belongs to another user \(uid 65534\)/)
  },
)

void t.test(
  'the proxy creates its socket_dir and socket with their modes, and removes the socket at close',
  async (t) => {
    const previous = process.umask(0o022)
    t.teardown(() => void process.umask(previous))
    const socketDir = join(base, 'proxy', 'run')
    const config = parseConfig({
      listen: '127.0.0.1:0',
      socket_dir: socketDir,
      socket_mode: '0770',
      owner_role: 'app_owner',
      upstream: { host: '127.0.0.1', sslmode: 'disable' },
      credentials: { static: { username: 'u', password: 'p' } },
      ops: { enabled: false },
    })
    const { logger } = capturingLogger()
    const server = createProxyServer(config, logger)
    await server.start({ prefetchCredentials: false })
    const socket = join(socketDir, `.s.PGSQL.${server.port}`)
    t.equal((await modeOf(socketDir)).toString(8), '710', 'socket_dir: 0700 plus search for the group')
    t.equal((await modeOf(socket)).toString(8), '770', 'the socket: socket_mode')
    await server.close()
    await t.rejects(stat(socket), { code: 'ENOENT' }, 'the socket file is removed at close')
  },
)
