import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { clusterFor } from '../support/pg-cluster.js'

// The container image end to end: scripts/image-test.sh builds it (the base image made locally when
// no registry answers) and runs it read-only, without capabilities, with host networking, in front
// of this file's PostgreSQL cluster. Skipped only when no Docker engine answers and none can be
// started (not root, or dockerd fails); the reason is printed.

const repoRoot = fileURLToPath(new URL('../../', import.meta.url))
/** The script's exit status when it cannot get a Docker engine. */
const NO_ENGINE = 3

// A cold machine builds the base image (debootstrap) and the image: minutes, not the usual 180 s.
t.setTimeout(900_000)

const cluster = await clusterFor(t)

const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
  const proc = spawn('bash', ['scripts/image-test.sh'], {
    cwd: repoRoot,
    env: {
      ...process.env,
      IMAGE_TEST_PGHOST: cluster.host,
      IMAGE_TEST_PGPORT: String(cluster.port),
      IMAGE_TEST_PGDATABASE: cluster.database,
      IMAGE_TEST_PGUSER: cluster.users.scram.user,
      IMAGE_TEST_PGPASSWORD: cluster.users.scram.password,
      IMAGE_TEST_OWNER_ROLE: cluster.ownerRole,
    },
  })
  // If this test is given up on, the script still cleans up: it exits through its EXIT trap on TERM.
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM')
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  proc.on('close', (code) => resolve({ code, stdout, stderr }))
})

if (result.code === NO_ENGINE) {
  const reason = `no Docker engine: ${result.stderr.trim() || 'scripts/docker-engine.sh could not start one'}`
  console.log(`# image test skipped: ${reason}`)
  t.plan(0, reason)
} else {
  const passed = result.stdout.split('\n').filter((line) => line.startsWith('ok - '))
  const output = `${result.stdout}\n${result.stderr}`
  t.equal(result.code, 0, 'scripts/image-test.sh: every check passed', { output })
  t.notMatch(result.stdout, /^not ok/m, 'no check failed', { output })
  // Each check must have run and passed: a script that stopped early or skipped one fails here.
  const expected: [string, RegExp][] = [
    ['the image builds without a registry', /^ok - docker build --pull=false/],
    [
      'healthy with the ops server on another port',
      /^ok - HEALTHCHECK reaches healthy: ops server on 127\.0\.0\.1:\d+/,
    ],
    ['healthy with the ops server off', /^ok - HEALTHCHECK reaches healthy: ops server off/],
    [
      'psql through the first container acts as the owner role',
      new RegExp(`^ok - psql through pgvp-image-test-a-\\d+, without a password, acts as ${cluster.ownerRole}`),
    ],
    [
      'psql through the second container acts as the owner role',
      new RegExp(`^ok - psql through pgvp-image-test-b-\\d+, without a password, acts as ${cluster.ownerRole}`),
    ],
    ['non-root, no capabilities', /^ok - the proxy runs as uid 1000, with no capabilities and no_new_privs/],
    ['read-only root', /^ok - the root filesystem is read-only/],
    ['docker stop exits 0 (first container)', /^ok - docker stop -t 45 pgvp-image-test-a-\d+: exit code 0/],
    ['docker stop drains: a running statement completes first', /^ok - a statement running at docker stop completes/],
    ['docker stop exits 0 (second container)', /^ok - docker stop -t 45 pgvp-image-test-b-\d+: exit code 0/],
    ['no password in the first log', /^ok - the log of pgvp-image-test-a-\d+ holds no password/],
    ['no password in the second log', /^ok - the log of pgvp-image-test-b-\d+ holds no password/],
  ]
  for (const [name, pattern] of expected) {
    t.ok(
      passed.some((line) => pattern.test(line)),
      name,
      { output },
    )
  }
  // How long each step took, in the test output (never asserted).
  for (const line of result.stdout.split('\n')) if (/\(\d+ s\)$|^# /.test(line)) t.comment(line)
}
