#!/usr/bin/env -S node --max-semi-space-size=1
// The executable shim: the compiled CLI lives in dist/ (npm run build).
// --max-semi-space-size=1 (MiB) keeps V8's young generation at its initial size. Left alone it grows
// to 2 x 16 MiB under the logins of many clients and never shrinks, most of the proxy's memory per
// idle client (docs/performance.md, "Idle clients"). V8 reads it only at start, so whoever runs
// `node bin/pg-vault-proxy.js` passes it too (Dockerfile, docs/examples/pg-vault-proxy.service).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main.js')) {
    console.error('pg-vault-proxy: not built yet; run `npm run build` first')
    process.exit(1)
  }
  throw err
})
