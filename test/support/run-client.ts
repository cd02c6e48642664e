import { spawn } from 'node:child_process'

export interface ClientRun {
  code: number | null
  stdout: string
  stderr: string
  /** stderr, then stdout: what a failed assertion should show. */
  out: string
}

/**
 * Runs a client program (psql, pgbench) to completion. `input` goes to its stdin; `encoding` is
 * how its output is decoded (latin1 for a LATIN1 psql session).
 */
export function runClient(
  cmd: string,
  args: string[],
  options: { input?: string | Buffer; env?: Record<string, string>; encoding?: BufferEncoding } = {},
): Promise<ClientRun> {
  const { input, env = {}, encoding = 'utf8' } = options
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PGCONNECT_TIMEOUT: '10', ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString(encoding)))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString(encoding)))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr, out: stderr + stdout }))
    child.stdin.end(input)
  })
}
