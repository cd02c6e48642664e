import { BackendCode, FrontendCode, type TransactionStatus } from '../pgwire/codes.js'

/** A request that earns one ReadyForQuery: a simple Query or FunctionCall, or a Sync. */
const QUERY = 0
const SYNC = 1
/** Parse, Bind, Execute, Describe or Close: no ReadyForQuery, but each ends a COPY IN it arrives in. */
const EXTENDED = 2
type Kind = typeof QUERY | typeof SYNC | typeof EXTENDED

/**
 * A run of requests of one kind, and the CopyDone/CopyFail messages the client sent after the
 * last of them (before the next run): counts, never one entry per message.
 */
interface Run {
  kind: Kind
  count: number
  copyEnds: number
}

/**
 * Runs kept at most (a few tens of KiB). A client that pipelines more alternating requests than
 * this without reading the answers makes the tracker give up: the session is then never idle again
 * (it cannot move to a new credential, nor idle out), keeps working, and is logged once.
 */
export const MAX_TRACKED_RUNS = 1024

/**
 * Follows a relayed session by message type only, to know its transaction status and whether it is
 * idle. It models what the server does with each frontend message, as PostgresMain and
 * SocketBackend do (src/backend/tcop/postgres.c) and CopyGetData during COPY FROM STDIN
 * (src/backend/commands/copyfromparse.c):
 *
 * - Query, FunctionCall and Sync each earn exactly one ReadyForQuery;
 * - Parse/Bind/Execute/Describe/Close earn none, and keep the batch's implicit transaction
 *   open until its Sync;
 * - CopyData, CopyDone and CopyFail outside COPY are read and ignored, with no reply;
 * - during COPY IN, Flush and Sync are ignored, CopyDone/CopyFail end the COPY, and any other
 *   message ends it with an error and is consumed.
 *
 * Outstanding requests are counted in runs of one kind (see Run), so a flood of ignored messages
 * costs a counter, not memory: the tracker's size is bounded by MAX_TRACKED_RUNS whatever the
 * client sends. The transparent reconnect relies on `isIdle`: never touch a session that is not.
 */
export class TransactionTracker {
  status: TransactionStatus = 'I'
  private readonly runs: Run[] = []
  /** Requests still owed a ReadyForQuery (the sum of the runs' counts). */
  private owed = 0
  private copy: 'none' | 'in' | 'out' = 'none'
  /**
   * CopyDone/CopyFail sent while no request was outstanding but a COPY could be under way (an
   * extended-query batch's Execute, or one already in COPY IN).
   */
  private leadingCopyEnds = 0
  /** A COPY IN ended on the server's side before the client sent CopyDone/CopyFail. */
  private copyEndExpected = false
  /**
   * A COPY started by an Execute ended: the server reads on in the batch (or, after an error,
   * ignores everything) until a Sync it does not ignore.
   */
  private awaitingSync = false
  /** More runs than MAX_TRACKED_RUNS were needed: the session's idleness is no longer known. */
  private gaveUp = false

  /** Called for every message the client sends. */
  onFrontend(code: number): void {
    if (this.gaveUp) return
    switch (code) {
      case FrontendCode.Query:
      case FrontendCode.FunctionCall:
        this.push(QUERY)
        break
      case FrontendCode.Sync:
        // Counted even during COPY IN, where the server ignores it: which Syncs were read inside
        // the COPY is settled when it ends (endCopyIn), and a run of them is one counter.
        this.push(SYNC)
        break
      case FrontendCode.Parse:
      case FrontendCode.Bind:
      case FrontendCode.Execute:
      case FrontendCode.Describe:
      case FrontendCode.Close:
        this.push(EXTENDED)
        break
      case FrontendCode.CopyDone:
      case FrontendCode.CopyFail:
        this.onCopyEnd()
        break
    }
  }

  /** Called for every message the upstream sends; `status` is the ReadyForQuery byte when code is 'Z'. */
  onBackend(code: number, status?: TransactionStatus): void {
    switch (code) {
      case BackendCode.ReadyForQuery:
        if (status) this.status = status
        this.answered()
        break
      case BackendCode.CopyInResponse:
        this.copy = 'in'
        break
      case BackendCode.CopyOutResponse:
      case BackendCode.CopyBothResponse:
        this.copy = 'out'
        break
      case BackendCode.CommandComplete:
      case BackendCode.ErrorResponse:
        if (this.copy === 'in') this.endCopyIn(code === BackendCode.CommandComplete)
        this.copy = 'none'
        break
    }
  }

  /** Nothing owed, no open extended-query batch, not in COPY, and the last ReadyForQuery said idle. */
  get isIdle(): boolean {
    return !this.gaveUp && this.owed === 0 && !this.batchOpen && this.copy === 'none' && this.status === 'I'
  }

  /** A request is being processed (worth forwarding a cancel for). */
  get isBusy(): boolean {
    return this.gaveUp || this.owed > 0 || this.batchOpen || this.copy !== 'none'
  }

  /** ReadyForQuery messages still owed. */
  get outstanding(): number {
    return this.owed
  }

  /** The client pipelined past MAX_TRACKED_RUNS: this session is never idle again. */
  get overflowed(): boolean {
    return this.gaveUp
  }

  /** Runs held now: at most MAX_TRACKED_RUNS, whatever the client sent. */
  get trackedRuns(): number {
    return this.runs.length
  }

  private push(kind: Kind): void {
    if (kind !== EXTENDED) this.owed++
    const last = this.runs.at(-1)
    if (last && last.kind === kind && last.copyEnds === 0) {
      last.count++
      return
    }
    if (this.runs.length >= MAX_TRACKED_RUNS) {
      this.gaveUp = true
      this.runs.length = 0
      return
    }
    this.runs.push({ kind, count: 1, copyEnds: 0 })
  }

  private onCopyEnd(): void {
    // The server already left COPY IN (an error mid-stream): this one is read and ignored.
    if (this.copyEndExpected) {
      this.copyEndExpected = false
      return
    }
    const last = this.runs.at(-1)
    if (last) last.copyEnds++
    // Nothing outstanding: the server ignores it, unless it is already in COPY IN.
    else if (this.copy === 'in') this.leadingCopyEnds++
  }

  /**
   * Extended-query messages are waiting for their Sync: until it, the server holds the batch's
   * implicit transaction open (the protocol chapter, "Extended Query").
   */
  private get batchOpen(): boolean {
    return this.runs.at(-1)?.kind === EXTENDED || this.awaitingSync
  }

  /** A ReadyForQuery: the oldest outstanding request is answered. */
  private answered(): void {
    // Extended-query messages before the answered request were all handled before it.
    while (this.runs[0]?.kind === EXTENDED) this.runs.shift()
    const head = this.runs[0]
    if (!head) return
    head.count--
    this.owed--
    if (head.kind === SYNC) this.awaitingSync = false
    if (head.count > 0) return
    // CopyDone/CopyFail sent after it reach a server no longer in COPY, which ignores them.
    this.runs.shift()
    if (this.runs.length === 0 && !this.batchOpen && this.copy === 'none') this.leadingCopyEnds = 0
  }

  /**
   * COPY IN ended on the server: with CommandComplete (`completed`), or with an ErrorResponse.
   * Everything the client sent during it is settled here, and only what is certain is taken off.
   */
  private endCopyIn(completed: boolean): void {
    // Who started it: the first outstanding Query, else an Execute (the extended-query messages
    // before the first outstanding request were all handled before it).
    let i = 0
    while (this.runs[i]?.kind === EXTENDED && (this.runs[i] as Run).copyEnds === 0) i++
    const starter = this.runs[i]
    const byQuery = starter?.kind === QUERY && this.leadingCopyEnds === 0
    // After a COPY started by an Execute the server reads on in the batch, or after an error
    // ignores everything, until a Sync (PostgresMain's ignore_till_sync).
    if (!byQuery) this.awaitingSync = true
    if (!completed) {
      // The client's CopyFail, a message that does not belong in COPY (consumed with an error), or
      // bad data the server read before the client's end: which one cannot be told from here. So no
      // request is taken off (one too many only keeps the session busy; one too few could let the
      // proxy act while the server still answers), and the client's first CopyDone/CopyFail, sent
      // or still to come, is ignored by the server.
      if (!this.takeFirstCopyEnd()) this.copyEndExpected = true
      return
    }
    // CommandComplete: the server read through the client's CopyDone, and the Syncs sent before it
    // were read during the COPY, where CopyGetData ignores them.
    if (this.leadingCopyEnds > 0) {
      this.leadingCopyEnds--
      return
    }
    if (starter?.kind === EXTENDED) {
      // Ended by the CopyDone sent right after the Execute.
      starter.copyEnds--
      return
    }
    let k = i
    if (byQuery) {
      const head = starter
      if (head.copyEnds > 0 && head.count === 1) {
        head.copyEnds--
        return
      }
      k = i + 1
    }
    let end = k
    while (end < this.runs.length && (this.runs[end] as Run).kind === SYNC && (this.runs[end] as Run).copyEnds === 0)
      end++
    const ender = this.runs[end]
    // Not a Sync run followed by the CopyDone: nothing here is certain, so nothing is taken off.
    if (!ender || ender.kind !== SYNC) return
    for (let n = k; n <= end; n++) this.consume(this.runs[n] as Run, (this.runs[n] as Run).count)
    ender.copyEnds--
    this.dropEmpty()
  }

  /** Takes the client's first CopyDone/CopyFail off, if it sent one. */
  private takeFirstCopyEnd(): boolean {
    if (this.leadingCopyEnds > 0) {
      this.leadingCopyEnds--
      return true
    }
    const run = this.runs.find((r) => r.copyEnds > 0)
    if (!run) return false
    run.copyEnds--
    return true
  }

  /** `n` requests of a run that the server ignored or consumed without a ReadyForQuery of their own. */
  private consume(run: Run, n: number): void {
    run.count -= n
    if (run.kind !== EXTENDED) this.owed -= n
  }

  /** Runs emptied by consume() go; the CopyDone/CopyFail after them now follow the run before. */
  private dropEmpty(): void {
    for (let i = this.runs.length - 1; i >= 0; i--) {
      const run = this.runs[i] as Run
      if (run.count > 0) continue
      const before = this.runs[i - 1]
      // Nothing before it: they reach a server out of COPY, which ignores them.
      if (before) before.copyEnds += run.copyEnds
      this.runs.splice(i, 1)
    }
  }
}
