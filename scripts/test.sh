#!/usr/bin/env bash
# The test command: set up, then typecheck, lint and run every test against a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
npm run --silent typecheck
npm run --silent lint
log=$(mktemp)
set +e
npx tap 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# tap's summary line is "# { total: N, pass: N, fail: N, ... }"; print it in the plain form CI reads.
summary=$(grep -E '^# \{ total: [0-9]+' "$log" | tail -n 1)
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
skip=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$summary")
rm -f "$log"
echo "tests: ${pass:-0} passed, ${fail:-0} failed${skip:+, $skip skipped}"
if [ -z "$total" ] || [ "${total:-0}" -eq 0 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$status"
