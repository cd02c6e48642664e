import { existsSync } from 'node:fs'
import { chmod, mkdir, stat, unlink } from 'node:fs/promises'
import { connect, type Server } from 'node:net'
import type { Logger } from 'pino'

// The Unix socket `<socket_dir>/.s.PGSQL.<port>` and its directory. Whoever can connect to the
// socket acts as the owner role, so neither may exist, even for an instant, with a wider mode than
// configured: the directory is created with its mode, and the socket is bound under a umask that
// yields socket_mode, rather than chmod-ed afterwards.

/**
 * The directory's mode for a socket mode: 0700, plus search permission for the group or others
 * when socket_mode lets them connect (connecting needs write on the socket and search on its
 * directory; listing the directory is never needed).
 */
export function socketDirMode(socketMode: number): number {
  return 0o700 | (socketMode & 0o070 ? 0o010 : 0) | (socketMode & 0o007 ? 0o001 : 0)
}

/**
 * Creates `dir` (and missing parents) with socketDirMode, or checks an existing one. One owned by
 * another user (not root) is refused: that user could swap the socket for their own at any time.
 * One that others may write to is used with a warning, because that is what a Kubernetes emptyDir
 * (0777) or /tmp (1777) is: in a world-writable directory without the sticky bit anyone can
 * replace the socket; with it, they can still take its name while the proxy is stopped.
 */
export async function prepareSocketDir(dir: string, socketMode: number, logger: Logger): Promise<void> {
  const mode = socketDirMode(socketMode)
  // mkdir's mode is narrowed by the umask, never widened: the directory is private from its first
  // instant, and chmod only adds back what the umask took.
  const created = await mkdir(dir, { recursive: true, mode })
  if (created !== undefined) {
    await chmod(dir, mode)
    return
  }
  const info = await stat(dir)
  if (!info.isDirectory()) throw new Error(`socket_dir: ${dir} is not a directory`)
  const uid = process.geteuid?.()
  if (uid !== undefined && info.uid !== uid && info.uid !== 0)
    throw new Error(
      `socket_dir: ${dir} belongs to another user (uid ${info.uid}), who could replace the proxy's socket; use a directory owned by the proxy's user or root`,
    )
  if ((info.mode & 0o022) === 0) return
  logger.warn(
    { socketDir: dir, mode: (info.mode & 0o7777).toString(8).padStart(4, '0') },
    info.mode & 0o1000
      ? 'socket_dir is writable by others (sticky): they cannot replace the socket, but can take its name while the proxy is stopped; prefer a directory only the proxy can write to'
      : "socket_dir is writable by group or others: they can replace the socket with their own and receive clients' connections; prefer a directory only the proxy can write to (chmod go-w), or a subdirectory the proxy creates",
  )
}

/**
 * Listens on the Unix socket `path`, created with exactly `socketMode`. Node binds synchronously
 * inside listen(), so a umask set around that call decides the mode the socket file is created
 * with (bind(2) creates it as 0777 & ~umask). The process umask is restored before anything else
 * runs.
 */
export async function listenUnixSocket(server: Server, path: string, socketMode: number): Promise<void> {
  await removeStaleSocket(path)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const previous = process.umask(~socketMode & 0o777)
    try {
      server.listen({ path }, () => {
        server.off('error', reject)
        resolve()
      })
    } finally {
      process.umask(previous)
    }
  })
  // Nothing to tighten if the bind happened as described; if a Node version ever bound later,
  // this still ends with the configured mode rather than the process umask's.
  if (existsSync(path) && ((await stat(path)).mode & 0o777) !== socketMode) await chmod(path, socketMode)
}

/** A socket file left by a crashed proxy blocks listen; one that still answers belongs to a live process. */
async function removeStaleSocket(path: string): Promise<void> {
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect({ path })
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (alive) throw new Error(`socket_dir: ${path} is in use by another process`)
  await unlink(path).catch(() => undefined)
}
