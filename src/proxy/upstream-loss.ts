import { encodeErrorResponse, type ErrorFields } from '../pgwire/backend-messages.js'
import { BackendCode } from '../pgwire/codes.js'
import type { UpstreamAnswer, UpstreamClosedAnswer } from './relay.js'
import { explainedFatal, lostUpstreamFarewell } from './session-farewell.js'

/** What the upstream sends when it is about to go away: SQLSTATEs of class 57 (src/backend/utils/errcodes.txt; ProcessInterrupts in src/backend/tcop/postgres.c). */
export const LOSS_SQLSTATES: ReadonlySet<string> = new Set(['57P01', '57P02', '57P05'])

/** How the upstream went away, for the session to decide whether to reconnect. */
export interface UpstreamLoss {
  /** The FATAL (or shutdown WARNING) the server sent, if any: '57P01 terminating connection ...'. */
  announced?: string
  sqlState?: string
  /** The socket error code, if it broke. */
  errorCode?: string
}

/**
 * What the session decided about a lost upstream: take over and reconnect (the relay withholds
 * the news, suspends, and waits for resume() or stop()), or let the session end, `why` being
 * added to what the client is told as the reason it was not reconnected.
 */
export type LossDecision = { kind: 'reconnect' } | { kind: 'end'; why?: string }

/** What an upstream ErrorResponse or NoticeResponse means for the session. */
export type UpstreamNews =
  | { kind: 'nothing' }
  /** A FATAL or PANIC that announces no loss (28000 ...): the session ends with it. */
  | { kind: 'fatal'; announced: string }
  /** The server is going away (`fatal`: said with a FATAL, else with a WARNING before the socket closes). */
  | { kind: 'loss'; announced: string; sqlState: string; fatal: boolean }

const NOTHING: UpstreamNews = { kind: 'nothing' }
const FORWARD: UpstreamAnswer = { kind: 'forward' }
const TAKE_OVER: UpstreamAnswer = { kind: 'take_over' }

/** The server's words, for logs and the end's detail: '57P01 terminating connection ...'. */
export function announcement(fields: ErrorFields): string {
  return `${fields.get('C') ?? '?'} ${fields.get('M') ?? ''}`
}

/** Classifies an upstream ErrorResponse (`code` E) or NoticeResponse (N) by its fields. */
export function classifyUpstreamNotice(code: number, fields: ErrorFields): UpstreamNews {
  // V is the untranslated severity (protocol 3.0, PostgreSQL 9.6+); S may be localized.
  const severity = fields.get('V') ?? fields.get('S')
  const sqlState = fields.get('C') ?? ''
  const fatal = code === BackendCode.ErrorResponse && (severity === 'FATAL' || severity === 'PANIC')
  // An immediate shutdown or a crash elsewhere is announced with a WARNING, then the socket closes
  // (quickdie in src/backend/tcop/postgres.c).
  const warned = code === BackendCode.NoticeResponse && severity === 'WARNING' && LOSS_SQLSTATES.has(sqlState)
  if (!fatal && !warned) return NOTHING
  const announced = announcement(fields)
  return LOSS_SQLSTATES.has(sqlState) ? { kind: 'loss', announced, sqlState, fatal } : { kind: 'fatal', announced }
}

/**
 * The relay's answer to an upstream ErrorResponse or NoticeResponse: a loss is put to `decide`
 * (the session's dispatcher), which takes over (reconnect) or lets the FATAL through, explained.
 */
export function answerUpstreamNotice(
  code: number,
  fields: ErrorFields,
  decide: (loss: UpstreamLoss) => LossDecision,
): UpstreamAnswer {
  const news = classifyUpstreamNotice(code, fields)
  if (news.kind === 'nothing') return FORWARD
  if (news.kind === 'fatal') return { kind: 'forward', fatal: news.announced }
  const decision = decide({ announced: news.announced, sqlState: news.sqlState })
  if (decision.kind === 'reconnect') return TAKE_OVER
  // A WARNING is passed on as it is: the socket's end follows, and is answered by answerUpstreamClosed.
  if (!news.fatal) return FORWARD
  if (decision.why === undefined) return { kind: 'forward', fatal: news.announced }
  return { kind: 'replace', bytes: encodeErrorResponse(explainedFatal(fields, decision.why)), fatal: news.announced }
}

/** The relay's answer to an upstream that closed without a word: reconnect, or the FATAL 08006 to tell the client. */
export function answerUpstreamClosed(
  errorCode: string | undefined,
  decide: (loss: UpstreamLoss) => LossDecision,
): UpstreamClosedAnswer {
  const decision = decide(errorCode ? { errorCode } : {})
  if (decision.kind === 'reconnect') return 'take_over'
  return { farewell: lostUpstreamFarewell(errorCode, decision.why) }
}
