/**
 * Node's timers take a signed 32-bit delay: anything above 2^31 - 1 ms (about 24.8 days) becomes
 * 1 ms, with only a TimeoutOverflowWarning (see setTimeout in Node's timers documentation). Vault
 * TTLs are often longer (AppRole's default token TTL is the system max, 768 h), so every timer
 * planned from a TTL goes through here: it waits in steps of at most MAX_TIMER_MS and re-arms until
 * the wall clock reaches the deadline.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** A timer that may be cleared; clearing twice, or after it fired, does nothing. */
export interface LongTimer {
  clear(): void
}

/**
 * Calls `fire` once after `delayMs` (clamped to at least 0), however long that is. The timer does
 * not keep the process alive (unref), like every background timer of the proxy.
 */
export function setLongTimeout(fire: () => void, delayMs: number, max = MAX_TIMER_MS): LongTimer {
  const deadline = Date.now() + Math.max(0, delayMs)
  let timer: NodeJS.Timeout | undefined
  const arm = (): void => {
    const remaining = deadline - Date.now()
    timer =
      remaining > max
        ? setTimeout(arm, max)
        : setTimeout(
            () => {
              timer = undefined
              fire()
            },
            Math.max(0, remaining),
          )
    timer.unref()
  }
  arm()
  return {
    clear: () => {
      clearTimeout(timer)
      timer = undefined
    },
  }
}
