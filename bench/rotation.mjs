// `npm run bench:rotation` entry: the benchmark is TypeScript (bench/rotation.ts, it reuses the test
// cluster and dev Vault helpers), so run it under tsx. Signals are forwarded so the child can clean up.
import { spawn } from 'node:child_process'
import { constants } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const child = spawn(
  process.execPath,
  ['--import', 'tsx', path.join(root, 'bench', 'rotation.ts'), ...process.argv.slice(2)],
  {
    cwd: root,
    stdio: 'inherit',
  },
)
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
