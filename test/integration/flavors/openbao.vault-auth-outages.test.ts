// vault-auth-outages.test.ts against the dev Vault answering as openbao (see test/support/vault-flavor.ts).
import { runInFlavor } from '../../support/vault-flavor.js'

await runInFlavor('openbao', 'vault-auth-outages.test.ts')
