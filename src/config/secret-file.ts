import { open } from 'node:fs/promises'

/** Where a warning about a secret file's mode goes (a pino logger fits). */
export interface SecretFileLog {
  warn(fields: Record<string, unknown>, message: string): void
}

/** Paths already warned about, with the mode they had: a file fixed and broken again warns again. */
const warned = new Map<string, number>()

/**
 * Reads a file that holds a secret (a password, a Vault token, a secret_id, a JWT) and warns, once
 * per path and mode, when others may read it. The rule is libpq's for a private key
 * (src/interfaces/libpq/fe-secure-openssl.c): no group or other access, except that a file owned
 * by root may be readable by its group (0640), as a Kubernetes secret with `defaultMode: 0440` and
 * an fsGroup is. libpq refuses such a key and ignores such a .pgpass (fe-connect.c); the proxy
 * only warns, so that a deployment that works today keeps working. The mode is that of the file
 * read (fstat on the open handle; a symlink, as Kubernetes mounts secrets, is followed). The
 * warning names the path and the mode, never the content.
 */
export async function readSecretFile(path: string, key: string, log: SecretFileLog | undefined): Promise<string> {
  const handle = await open(path, 'r')
  try {
    const info = await handle.stat()
    const mode = info.mode & 0o777
    const othersMayRead = info.uid === 0 ? mode & 0o037 : mode & 0o077
    if (!othersMayRead) warned.delete(path)
    else if (log && warned.get(path) !== mode) {
      warned.set(path, mode)
      log.warn(
        { key, path, mode: mode.toString(8).padStart(4, '0') },
        'a secret file is readable by group or others; make it readable by the proxy user only (chmod 600)',
      )
    }
    return await handle.readFile('utf8')
  } finally {
    await handle.close()
  }
}
