// vault-credentials.test.ts against the dev Vault answering as openbao (see test/support/vault-flavor.ts).
import { runInFlavor } from '../../support/vault-flavor.js'

await runInFlavor('openbao', 'vault-credentials.test.ts')
