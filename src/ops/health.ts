import type { CredentialStatus } from '../vault/credential-source.js'

export type LifecyclePhase = 'starting' | 'running' | 'draining' | 'stopped'

export interface HealthCheck {
  name: string
  ok: boolean
  detail: string
}

export interface Readiness {
  ready: boolean
  checks: HealthCheck[]
}

/**
 * The proxy's lifecycle phase and what readiness is made of. Ready means a new client would get a
 * session now without waiting on Vault: listeners up, not shutting down, a valid credential at hand.
 */
export class Health {
  private current: LifecyclePhase = 'starting'

  constructor(private readonly credentials: () => CredentialStatus) {}

  get phase(): LifecyclePhase {
    return this.current
  }

  /** Listeners are up (/startupz). */
  get started(): boolean {
    return this.current !== 'starting'
  }

  markRunning(): void {
    if (this.current === 'starting') this.current = 'running'
  }

  markDraining(): void {
    if (this.current !== 'stopped') this.current = 'draining'
  }

  markStopped(): void {
    this.current = 'stopped'
  }

  readiness(): Readiness {
    const phase = this.current
    const credential = this.credentials()
    const checks: HealthCheck[] = [
      {
        name: 'listening',
        ok: phase !== 'starting',
        detail: phase === 'starting' ? 'listeners not up yet' : 'listeners up',
      },
      {
        name: 'accepting',
        ok: phase === 'running' || phase === 'starting',
        detail: phase === 'draining' || phase === 'stopped' ? 'shutting down: no new sessions' : 'accepting sessions',
      },
      { name: 'credentials', ok: credential.ready, detail: credential.detail },
    ]
    return { ready: checks.every((c) => c.ok), checks }
  }
}
