import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'

interface Teardown {
  teardown(fn: () => unknown): void
}

/** What the demo's banner says, line by line where a reader would paste it. */
export interface Banner {
  port: number
  psqlLine: string
  exportLine: string
  checkLine: string
  execLine: string
}

export interface DemoProcess {
  /** Everything the demo and the proxy wrote, stdout and stderr. */
  output(): string
  /** Resolves once the banner is out (the proxy is ready), with the port and files it names. */
  banner(): Promise<Banner>
  /** Ctrl-C in the demo's terminal: SIGINT to its whole process group. */
  interrupt(): void
  exit: Promise<number | null>
}

const tsxCli = createRequire(import.meta.url).resolve('tsx/cli')

/**
 * `npm run demo` as a terminal runs it: through tsx's command-line runner (which, like npm, passes
 * signals on to its child), in a process group of its own as a shell puts a job in one, running the
 * proxy from source. `env` is laid over the test's environment (PGVP_DEMO_PORT, …).
 */
export function startDemo(t: Teardown, env: Record<string, string | undefined> = {}): DemoProcess {
  const demo = spawn(process.execPath, [tsxCli, 'scripts/demo.ts'], {
    env: { ...process.env, PGVP_DEMO_FROM_SOURCE: '1', ...env },
    detached: true,
  })
  let output = ''
  demo.stdout.on('data', (d: Buffer) => (output += d.toString()))
  demo.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const exit = new Promise<number | null>((resolve) => demo.on('exit', resolve))
  t.teardown(async () => {
    // After a failure: stopped as Ctrl-C would, so the proxy, Vault and PostgreSQL go too; then killed.
    if (demo.exitCode !== null) return
    process.kill(-(demo.pid as number), 'SIGTERM')
    const stopped = await Promise.race([exit.then(() => true), new Promise((r) => setTimeout(r, 30_000, false))])
    if (!stopped) process.kill(-(demo.pid as number), 'SIGKILL')
  })
  return {
    output: () => output,
    interrupt: () => process.kill(-(demo.pid as number), 'SIGINT'),
    exit,
    async banner() {
      for (let i = 0; i < 1200; i++) {
        const line = (pattern: RegExp): string | undefined => pattern.exec(output)?.[1]
        const port = line(/is listening on 127\.0\.0\.1:(\d+)/)
        const psqlLine = line(/^ {2}(psql ".*")$/m)
        const exportLine = line(/^ {2}(export PGHOST=.*)$/m)
        const checkLine = line(/^ {2}(node .* check --config .*)$/m)
        const execLine = line(/^ {2}(node .* exec --config .*)$/m)
        if (port && psqlLine && exportLine && checkLine && execLine)
          return { port: Number(port), psqlLine, exportLine, checkLine, execLine }
        if (demo.exitCode !== null) break
        await new Promise((r) => setTimeout(r, 100))
      }
      throw new Error(`the demo printed no banner:\n${output}`)
    },
  }
}
