import { spawn } from 'node:child_process'
import type { PgCluster } from './pg-cluster.js'

/**
 * Runs `select pg_sleep(30)` in psql through the proxy, waits until the query is running upstream,
 * then interrupts psql as a user pressing Ctrl-C would (psql sends a CancelRequest to the proxy).
 */
export async function ctrlCDuringSleep(
  port: number,
  cluster: PgCluster,
): Promise<{ stderr: string; code: number | null; afterCtrlCMs: number }> {
  const sql = 'select pg_sleep(30)'
  const child = spawn('psql', [
    '-h',
    '127.0.0.1',
    '-p',
    String(port),
    '-U',
    'app',
    '-d',
    cluster.database,
    '-X',
    '-c',
    sql,
  ])
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  for (let i = 0; i < 100; i++) {
    const running = await cluster.query("select 1 from pg_stat_activity where query = $1 and state = 'active'", [sql])
    if (running.length > 0) break
    await new Promise((r) => setTimeout(r, 50))
  }
  const sentAt = Date.now()
  child.kill('SIGINT')
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  return { stderr, code, afterCtrlCMs: Date.now() - sentAt }
}
