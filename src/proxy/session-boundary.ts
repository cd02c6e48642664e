import { AsyncLocalStorage } from 'node:async_hooks'
import type { EventEmitter } from 'node:events'

/**
 * Where an unexpected error in one client session stops: that session ends (FATAL XX000) and the
 * process, with every other session, goes on.
 *
 * A session's code runs in three ways, and each is covered:
 * - socket events: every listener on the session's sockets runs through `enclose`, whose emit
 *   catches what a listener throws;
 * - its own calls (`run`), and whatever those start: timers, promises, sockets created meanwhile
 *   inherit the boundary through AsyncLocalStorage, so a throw in a timer or a rejection nobody
 *   handled reaches `process.on('uncaughtException' | 'unhandledRejection')`, where
 *   `SessionBoundary.current()` names the session it came from (src/ops/lifecycle.ts).
 */
export class SessionBoundary {
  private static readonly active = new AsyncLocalStorage<SessionBoundary>()
  private faulted = false

  /** `onFault` is called once, with the first error; later ones are only passed to `onLaterFault`. */
  constructor(
    private readonly onFault: (err: unknown) => void,
    private readonly onLaterFault: (err: unknown) => void = () => undefined,
  ) {}

  /** The boundary of the session whose code is running now (or started the timer or promise that failed). */
  static current(): SessionBoundary | undefined {
    return SessionBoundary.active.getStore()
  }

  get hasFaulted(): boolean {
    return this.faulted
  }

  /** Runs `fn` inside the boundary. */
  run<T>(fn: () => T): T {
    return SessionBoundary.active.run(this, fn)
  }

  /** Every event `emitter` emits from now on runs inside the boundary; a listener's throw is this session's fault. */
  enclose(emitter: EventEmitter): void {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- called with the emitter as `this` below
    const emit = emitter.emit
    emitter.emit = (event: string | symbol, ...args: unknown[]): boolean =>
      SessionBoundary.active.run(this, () => {
        try {
          return emit.call(emitter, event, ...args)
        } catch (err) {
          this.fault(err)
          return true
        }
      })
  }

  /** The session failed in a way nobody handled. */
  fault(err: unknown): void {
    if (this.faulted) {
      this.onLaterFault(err)
      return
    }
    this.faulted = true
    this.onFault(err)
  }
}
