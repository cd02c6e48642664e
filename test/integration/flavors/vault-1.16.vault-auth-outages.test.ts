// vault-auth-outages.test.ts against the dev Vault answering as vault-1.16 (see test/support/vault-flavor.ts).
import { runInFlavor } from '../../support/vault-flavor.js'

await runInFlavor('vault-1.16', 'vault-auth-outages.test.ts')
