// Just enough reading of SQL text for the proxy to know when a session's state may have changed
// and to pull one PREPARE out of a multi-statement query. It never decides what SQL means: a
// false positive costs one state probe, and the probe (not this file) says what the state is.
//
// The text comes from clients (Query and Parse messages, up to 64 KiB each), so every function here
// reads it in forward passes that never step back: time linear in its length, whatever it holds.
// Regular expressions were not: `set_config('` and 60,000 dots took seconds of backtracking, during
// which no other session moved.

/** Words that can change session state from inside any statement (a SELECT of set_config, pg_advisory_lock...). */
const STATE_SUBSTRINGS = ['set_config', 'advisory', 'pg_temp']
/** ... and whole words that can (CREATE TEMP TABLE; DECLARE ... WITH HOLD). */
const STATE_WHOLE_WORDS = new Set(['temp', 'temporary', 'hold'])
/** Statements that may change session state by their first word; a SELECT only with INTO. */
const STATE_VERBS = new Set([
  'set',
  'reset',
  'prepare',
  'deallocate',
  'listen',
  'unlisten',
  'discard',
  'declare',
  'create',
  'do',
  'call',
  'load',
])

/** Characters the scanner examined since the process started, for tests that prove its passes linear. */
let examined = 0
export function charactersExamined(): number {
  return examined
}

/**
 * Could running `sql` change session state that a new upstream connection would need (a setting,
 * a prepared statement, a LISTEN, a temp table, a holdable cursor, an advisory lock)? Errs on yes.
 */
export function mayChangeSessionState(sql: string): boolean {
  if (hasStateWord(sql)) return true
  let atStart = true
  let isSelect = false
  let changes = false
  lex(sql, (token) => {
    if (token.depth !== 0 || token.kind === Kind.Comment) return false
    if (token.kind === Kind.Semicolon) {
      atStart = true
      isSelect = false
    } else if (atStart) {
      atStart = false
      const verb = token.kind === Kind.Word && token.end - token.start <= 10 ? wordAt(sql, token) : ''
      isSelect = verb === 'select'
      changes = STATE_VERBS.has(verb)
    } else if (isSelect && token.kind === Kind.Word && token.end - token.start === 4) {
      // SELECT ... INTO creates a table.
      changes = wordAt(sql, token) === 'into'
    }
    return changes
  })
  return changes
}

/**
 * Does some statement of `sql` start with `word` (ASCII letters, any case), after comments? For
 * example EXECUTE, which runs whatever its SQL prepared statement was prepared with.
 */
export function hasStatementStartingWith(sql: string, word: string): boolean {
  const wanted = asciiLower(word)
  let atStart = true
  let found = false
  lex(sql, (token) => {
    if (token.depth !== 0 || token.kind === Kind.Comment) return false
    if (token.kind === Kind.Semicolon) atStart = true
    else if (atStart) {
      atStart = false
      found = token.kind === Kind.Word && token.end - token.start === wanted.length && wordAt(sql, token) === wanted
    }
    return found
  })
  return found
}

/**
 * Names of custom (dotted) settings that `sql` may set, e.g. `app.tenant` from `SET app.tenant = 'x'`
 * or `set_config('app.tenant', ...)`. PostgreSQL hides these placeholders from pg_settings, so the
 * proxy asks for them by name. Dollar-quoted bodies (DO, CREATE FUNCTION) are read as SQL too.
 */
export function customSettingNames(sql: string): string[] {
  const fromSet: string[] = []
  const fromSetConfig: string[] = []
  // SET [SESSION] name[.name...] and set_config ( 'name', as small state machines over the tokens.
  let state: 'idle' | 'set' | 'session' | 'name' | 'dot' | 'set_config' | 'paren' = 'idle'
  let parts: string[] = []
  const endName = (): void => {
    // Dotted: two or more names, or one quoted name that holds the dots ("app.tenant").
    const name = parts.join('.')
    if (name.includes('.')) fromSet.push(name)
    parts = []
  }
  const step = (token: Token): void => {
    const dot = token.kind === Kind.Other && sql.charCodeAt(token.start) === DOT
    switch (state) {
      case 'set':
        if (token.kind === Kind.Word && token.end - token.start === 7 && wordAt(sql, token) === 'session') {
          state = 'session'
          return
        }
        break
      case 'session':
        if (isIdentifier(sql, token)) break
        // SET SESSION not followed by a name: "session" was the name (SET session.x = 1).
        parts = ['session']
        state = 'name'
        return step(token)
      case 'name':
        if (dot) {
          state = 'dot'
          return
        }
        endName()
        state = 'idle'
        break
      case 'set_config':
        state = token.kind === Kind.Other && sql.charCodeAt(token.start) === OPEN_PAREN ? 'paren' : 'idle'
        if (state === 'paren') return
        break
      case 'paren':
        if (token.kind === Kind.String && !token.dollar) {
          const name = stringValue(sql, token)
          const at = name.indexOf('.', 1)
          if (at > 0 && at < name.length - 1) fromSetConfig.push(asciiLower(name))
        }
        state = 'idle'
        break
    }
    if (state === 'set' || state === 'session' || state === 'dot') {
      if (isIdentifier(sql, token)) {
        parts.push(identifierValue(sql, token))
        state = 'name'
        return
      }
      endName()
      state = 'idle'
    }
    if (token.kind === Kind.Word && token.end - token.start <= 10) {
      const word = wordAt(sql, token)
      if (word === 'set') state = 'set'
      else if (word === 'set_config') state = 'set_config'
    }
  }
  lex(sql, (token) => {
    // A dollar-quoted string's tokens were seen one by one (depth 1); the string as a whole is not a name.
    if (token.kind !== Kind.Comment && !(token.kind === Kind.String && token.dollar)) step(token)
    return false
  })
  endName()
  return [...new Set([...fromSet, ...fromSetConfig])]
}

/**
 * Splits a query string into statements at top-level semicolons, skipping quoted strings, quoted
 * identifiers, dollar quotes and comments. Each statement is returned with leading comments and
 * whitespace removed; empty statements are dropped.
 */
export function splitStatements(sql: string): string[] {
  return topLevelStatements(sql).map(({ start, end }) => sql.slice(start, end))
}

/**
 * The one `PREPARE <name> ...` statement in a query string that may hold several (PostgreSQL keeps
 * the whole string in pg_prepared_statements.statement), or undefined when it cannot be told apart.
 */
export function prepareStatementFor(queryString: string, name: string): string | undefined {
  const matches = topLevelStatements(queryString).filter(
    (statement) => statement.prepares !== undefined && statement.prepares === name,
  )
  const [only] = matches
  return matches.length === 1 && only ? queryString.slice(only.start, only.end) : undefined
}

/** An escape-string literal: right whatever standard_conforming_strings the client chose. */
export function quoteLiteral(value: string): string {
  return `E'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`
}

/** A quoted identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

interface Statement {
  start: number
  end: number
  /** The name a PREPARE statement gives, as PostgreSQL reads it. */
  prepares: string | undefined
}

/** Top-level statements: from the first token that is not a comment to the last token before the semicolon. */
function topLevelStatements(sql: string): Statement[] {
  const statements: Statement[] = []
  let current: Statement | undefined
  let tokens = 0
  let isPrepare = false
  lex(sql, (token) => {
    if (token.depth !== 0) return false
    if (token.kind === Kind.Semicolon) {
      if (current) statements.push(current)
      current = undefined
      return false
    }
    if (!current) {
      if (token.kind === Kind.Comment) return false
      current = { start: token.start, end: token.end, prepares: undefined }
      tokens = 0
    }
    current.end = token.end
    if (token.kind === Kind.Comment) return false
    tokens++
    if (tokens === 1) isPrepare = token.kind === Kind.Word && token.end - token.start === 7 && wordAt(sql, token) === 'prepare'
    else if (tokens === 2 && isPrepare && isIdentifier(sql, token)) current.prepares = identifierValue(sql, token)
    return false
  })
  if (current) statements.push(current)
  return statements
}

const Kind = {
  /** A keyword or unquoted identifier (letters, digits, _, $ and non-ASCII), or a number. */
  Word: 0,
  /** "a quoted identifier" */
  QuotedIdent: 1,
  /** 'a string', E'with escapes', or $tag$ a dollar-quoted one $tag$. */
  String: 2,
  Comment: 3,
  Semicolon: 4,
  /** Any other single character: operators, punctuation, a parameter's $. */
  Other: 5,
} as const
type Kind = (typeof Kind)[keyof typeof Kind]

/**
 * One token, reused for every call (a visitor must copy what it keeps). Tokens inside a
 * dollar-quoted string have depth 1 and come before the string itself (depth 0, at its end).
 */
interface Token {
  kind: Kind
  start: number
  end: number
  depth: 0 | 1
  /** A String token that is dollar-quoted. */
  dollar: boolean
  /** A String token that is an E'' string, where a backslash escapes. */
  escapes: boolean
}

const TAB = 9
const LINE_FEED = 10
const CARRIAGE_RETURN = 13
const SPACE = 32
const DOUBLE_QUOTE = 34
const DOLLAR = 36
const SINGLE_QUOTE = 39
const OPEN_PAREN = 40
const ASTERISK = 42
const DASH = 45
const DOT = 46
const SLASH = 47
const SEMICOLON = 59
const BACKSLASH = 92

/** PostgreSQL's whitespace (`space` in src/backend/parser/scan.l), vertical tab included. */
function isSpace(c: number): boolean {
  return c === SPACE || (c >= TAB && c <= CARRIAGE_RETURN)
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57
}

/** scan.l's ident_start: ASCII letters, underscore, and every non-ASCII character. */
function isIdentStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 128
}

/** scan.l's ident_cont: ident_start, digits and $. */
function isIdentCont(c: number): boolean {
  return isIdentStart(c) || isDigit(c) || c === DOLLAR
}

function isAsciiWordChar(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || isDigit(c) || c === 95
}

function asciiLowerCode(c: number): number {
  return c >= 65 && c <= 90 ? c + 32 : c
}

/**
 * The lexer: PostgreSQL's token boundaries (src/backend/parser/scan.l), one forward pass. A
 * dollar-quoted string's contents are lexed as SQL too (they are DO and function bodies), but end,
 * as in PostgreSQL, at the first occurrence of the closing tag whatever they contain. Unterminated
 * quotes and comments run to the end of the text. `visit` returns true to stop early.
 */
function lex(sql: string, visit: (token: Token) => boolean): void {
  const n = sql.length
  const token: Token = { kind: Kind.Other, start: 0, end: 0, depth: 0, dollar: false, escapes: false }
  /** The open dollar quote's tag, e.g. "$fn$", and where it started. */
  let tag: string | undefined
  let tagStart = 0
  let work = 0

  /** Does the open dollar quote's closing tag start at i? Examines only the characters that match. */
  const closesAt = (i: number): boolean => {
    if (tag === undefined || sql.charCodeAt(i) !== DOLLAR) return false
    for (let k = 1; k < tag.length; k++) {
      work++
      if (sql.charCodeAt(i + k) !== tag.charCodeAt(k)) return false
    }
    return true
  }
  /** Where a scan inside the text must stop: its end, or the open dollar quote's end. */
  const stops = (i: number): boolean => i >= n || closesAt(i)
  const emit = (kind: Kind, start: number, end: number, depth: 0 | 1 = tag === undefined ? 0 : 1): boolean => {
    token.kind = kind
    token.start = start
    token.end = end
    token.depth = depth
    token.dollar = false
    token.escapes = false
    return visit(token)
  }

  let i = 0
  while (i < n) {
    work++
    const c = sql.charCodeAt(i)
    if (tag !== undefined && closesAt(i)) {
      i += tag.length
      tag = undefined
      if (emitString(tagStart, i, true, false)) break
      continue
    }
    if (isSpace(c)) {
      i++
      continue
    }
    const start = i
    const tagEnd = c === DOLLAR && tag === undefined ? dollarTagEnd(i) : 0
    let stop: boolean
    if (isIdentStart(c)) {
      do {
        i++
        work++
      } while (i < n && isIdentCont(sql.charCodeAt(i)) && !stops(i))
      // A one-letter prefix glued to a quote: E'...' (backslash escapes), B'', X'', N''.
      const prefix = i - start === 1 ? asciiLowerCode(c) : 0
      if (sql.charCodeAt(i) === SINGLE_QUOTE && (prefix === 101 || prefix === 98 || prefix === 120 || prefix === 110)) {
        i = skipQuoted(i, SINGLE_QUOTE, prefix === 101)
        stop = emitString(start, i, false, prefix === 101)
      } else stop = emit(Kind.Word, start, i)
    } else if (isDigit(c)) {
      do {
        i++
        work++
      } while (i < n && isAsciiWordChar(sql.charCodeAt(i)))
      stop = emit(Kind.Word, start, i)
    } else if (c === SINGLE_QUOTE) {
      i = skipQuoted(i, SINGLE_QUOTE, false)
      stop = emitString(start, i, false, false)
    } else if (c === DOUBLE_QUOTE) {
      i = skipQuoted(i, DOUBLE_QUOTE, false)
      stop = emit(Kind.QuotedIdent, start, i)
    } else if (c === DASH && sql.charCodeAt(i + 1) === DASH) {
      i += 2
      while (!stops(i) && sql.charCodeAt(i) !== LINE_FEED && sql.charCodeAt(i) !== CARRIAGE_RETURN) {
        i++
        work++
      }
      stop = emit(Kind.Comment, start, i)
    } else if (c === SLASH && sql.charCodeAt(i + 1) === ASTERISK) {
      i = skipBlockComment(i)
      stop = emit(Kind.Comment, start, i)
    } else if (tagEnd > 0) {
      // Inside a dollar quote another tag is only text to PostgreSQL's lexer: it is read as SQL.
      tag = sql.slice(i, tagEnd)
      tagStart = i
      i = tagEnd
      continue
    } else {
      i++
      stop = emit(c === SEMICOLON ? Kind.Semicolon : Kind.Other, start, i)
    }
    if (stop) {
      examined += work
      return
    }
  }
  if (tag !== undefined) emitString(tagStart, n, true, false)
  examined += work

  function emitString(start: number, end: number, dollar: boolean, escapes: boolean): boolean {
    token.kind = Kind.String
    token.start = start
    token.end = end
    token.depth = dollar ? 0 : tag === undefined ? 0 : 1
    token.dollar = dollar
    token.escapes = escapes
    return visit(token)
  }

  /** From an opening quote to just past its closing one; a doubled quote is part of the text. */
  function skipQuoted(open: number, quote: number, escapes: boolean): number {
    let j = open + 1
    while (!stops(j)) {
      work++
      const c = sql.charCodeAt(j)
      if (escapes && c === BACKSLASH) j += 2
      else if (c === quote) {
        if (sql.charCodeAt(j + 1) !== quote) return j + 1
        j += 2
      } else j++
    }
    return Math.min(j, n)
  }

  /** Block comments nest in PostgreSQL. */
  function skipBlockComment(open: number): number {
    let depth = 0
    let j = open
    while (!stops(j)) {
      work++
      const c = sql.charCodeAt(j)
      if (c === SLASH && sql.charCodeAt(j + 1) === ASTERISK) {
        depth++
        j += 2
      } else if (c === ASTERISK && sql.charCodeAt(j + 1) === SLASH) {
        depth--
        j += 2
        if (depth === 0) return j
      } else j++
    }
    return Math.min(j, n)
  }

  /** Past the closing $ of a dollar-quote tag ($$ or $name$) starting at i, or 0 if there is none. */
  function dollarTagEnd(at: number): number {
    let j = at + 1
    if (sql.charCodeAt(j) === DOLLAR) return j + 1
    if (!isIdentStart(sql.charCodeAt(j))) return 0
    do {
      j++
      work++
    } while (j < n && isIdentCont(sql.charCodeAt(j)) && sql.charCodeAt(j) !== DOLLAR)
    return sql.charCodeAt(j) === DOLLAR ? j + 1 : 0
  }
}

/**
 * Is one of STATE_SUBSTRINGS inside a word, or one of STATE_WHOLE_WORDS a word, anywhere in the
 * text (comments and strings included: a false positive costs a probe)? Words are runs of ASCII
 * letters, digits and underscores. One pass; each comparison is bounded by the longest word sought.
 */
function hasStateWord(sql: string): boolean {
  const n = sql.length
  let work = 0
  let wordStart = -1
  let found = false
  for (let i = 0; i <= n && !found; i++) {
    work++
    const c = i < n ? sql.charCodeAt(i) : SPACE
    if (!isAsciiWordChar(c)) {
      if (wordStart >= 0 && i - wordStart <= 9) found = STATE_WHOLE_WORDS.has(asciiLower(sql.slice(wordStart, i)))
      wordStart = -1
      continue
    }
    if (wordStart < 0) wordStart = i
    const lower = asciiLowerCode(c)
    for (const wanted of STATE_SUBSTRINGS) {
      if (lower !== wanted.charCodeAt(0)) continue
      let k = 1
      while (k < wanted.length && asciiLowerCode(sql.charCodeAt(i + k)) === wanted.charCodeAt(k)) k++
      work += k
      if (k === wanted.length) found = true
    }
  }
  examined += work
  return found
}

/** A Word token's text, ASCII letters folded to lower case. */
function wordAt(sql: string, token: Token): string {
  return asciiLower(sql.slice(token.start, token.end))
}

/** A token that names something: an unquoted identifier, or a quoted one with something in it. */
function isIdentifier(sql: string, token: Token): boolean {
  if (token.kind === Kind.Word) return isIdentStart(sql.charCodeAt(token.start))
  return token.kind === Kind.QuotedIdent && token.end - token.start > 2 && sql.charCodeAt(token.end - 1) === DOUBLE_QUOTE
}

/** The name PostgreSQL makes of an identifier: quoted ones kept as written, others folded to lower case. */
function identifierValue(sql: string, token: Token): string {
  if (token.kind === Kind.Word) return wordAt(sql, token)
  return sql.slice(token.start + 1, token.end - 1).replaceAll('""', '"')
}

/** A quoted string's value: '' is one quote; in an E'' string a backslash takes the next character as is. */
function stringValue(sql: string, token: Token): string {
  const open = sql.indexOf("'", token.start)
  const close = token.end - 1 > open && sql.charCodeAt(token.end - 1) === SINGLE_QUOTE ? token.end - 1 : token.end
  let text = sql.slice(open + 1, close).replaceAll("''", "'")
  if (token.escapes && text.includes('\\')) text = Array.from(text.split('\\\\'), (part) => part.replaceAll('\\', '')).join('\\')
  return text
}

/** PostgreSQL folds only ASCII letters in identifiers and setting names (UTF-8 databases). */
function asciiLower(text: string): string {
  let lower = ''
  let from = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c >= 65 && c <= 90) {
      lower += text.slice(from, i) + String.fromCharCode(c + 32)
      from = i + 1
    }
  }
  return from === 0 ? text : lower + text.slice(from)
}
