import { BackendCode, FrontendCode, type TransactionStatus } from '../pgwire/codes.js'

/** Requests that each earn exactly one ReadyForQuery, and the CopyDone/CopyFail marker. */
type Pending = 'query' | 'sync' | 'copy-end'

/**
 * Follows a relayed session by message type only, to know its transaction status and whether it is
 * idle. Outstanding requests are counted as pgbouncer does: each Query, Sync and FunctionCall is
 * owed one ReadyForQuery, except Syncs that arrive while the server is in COPY IN, which it ignores.
 * The transparent reconnect relies on `isIdle`: never touch a session that is not.
 */
export class TransactionTracker {
  status: TransactionStatus = 'I'
  private readonly pending: Pending[] = []
  private copy: 'none' | 'in' | 'out' = 'none'
  /** A COPY IN ended on the server's side before the client sent CopyDone/CopyFail. */
  private copyEndExpected = false
  /** Parse/Bind/Execute/Describe/Close/Flush sent since the last Sync: an open extended-query batch. */
  private batchOpen = false

  /** Called for every message the client sends. */
  onFrontend(code: number): void {
    switch (code) {
      case FrontendCode.Query:
      case FrontendCode.FunctionCall:
        this.pending.push('query')
        break
      case FrontendCode.Sync:
        this.pending.push('sync')
        this.batchOpen = false
        break
      case FrontendCode.Parse:
      case FrontendCode.Bind:
      case FrontendCode.Execute:
      case FrontendCode.Describe:
      case FrontendCode.Close:
      case FrontendCode.Flush:
        // Until its Sync, the server holds the batch's implicit transaction open (pgwire.md §5.2).
        this.batchOpen = true
        break
      case FrontendCode.CopyDone:
      case FrontendCode.CopyFail:
        // The server drops CopyDone/CopyFail sent after it already left COPY IN.
        if (this.copyEndExpected) this.copyEndExpected = false
        else this.pending.push('copy-end')
        break
    }
  }

  /** Called for every message the upstream sends; `status` is the ReadyForQuery byte when code is 'Z'. */
  onBackend(code: number, status?: TransactionStatus): void {
    switch (code) {
      case BackendCode.ReadyForQuery:
        if (status) this.status = status
        this.pending.shift()
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
        if (this.copy === 'in') this.endCopyIn()
        this.copy = 'none'
        break
    }
  }

  /** Nothing owed, no open extended-query batch, not in COPY, and the last ReadyForQuery said idle. */
  get isIdle(): boolean {
    return this.pending.length === 0 && !this.batchOpen && this.copy === 'none' && this.status === 'I'
  }

  /** A request is being processed (worth forwarding a cancel for). */
  get isBusy(): boolean {
    return this.pending.length > 0 || this.batchOpen || this.copy !== 'none'
  }

  get outstanding(): number {
    return this.pending.length
  }

  /** Syncs sent during COPY IN were ignored by the server: drop them, up to the copy-end marker. */
  private endCopyIn(): void {
    const marker = this.pending.indexOf('copy-end')
    const end = marker < 0 ? this.pending.length : marker
    const kept = this.pending.slice(0, end).filter((p) => p !== 'sync')
    this.pending.splice(0, marker < 0 ? end : end + 1, ...kept)
    if (marker < 0) this.copyEndExpected = true
  }
}
