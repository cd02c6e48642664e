// `npm run bench` and `npm run bench:rotation` entry: the benchmarks are TypeScript (bench/run.ts,
// bench/rotation.ts; they reuse the test harness), so run one under tsx: `node bench/run.mjs`
// runs bench/run.ts, `node bench/run.mjs rotation` bench/rotation.ts. Signals are forwarded so
// the child can clean up.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { constants } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const named = process.argv[2] && existsSync(path.join(root, 'bench', `${process.argv[2]}.ts`))
const script = path.join(root, 'bench', `${named ? process.argv[2] : 'run'}.ts`)
const child = spawn(process.execPath, ['--import', 'tsx', script, ...process.argv.slice(named ? 3 : 2)], {
  cwd: root,
  stdio: 'inherit',
})
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => child.kill(signal))
}
child.on('exit', (code, signal) => {
  process.exitCode = code ?? 128 + (constants.signals[signal] ?? 0)
})
child.on('error', (err) => {
  console.error(`bench: could not start tsx: ${err.message}`)
  process.exitCode = 1
})
