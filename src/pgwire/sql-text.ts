// Just enough reading of SQL text for the proxy to know when a session's state may have changed
// and to pull one PREPARE out of a multi-statement query. It never decides what SQL means: a
// false positive costs one state probe, and the probe (not this file) says what the state is.

const STATE_VERBS = /^(?:set|reset|prepare|deallocate|listen|unlisten|discard|declare|create|do|call|load|select)\b/i
/** Words that can change session state from inside any statement (a SELECT of set_config, pg_advisory_lock...). */
const STATE_WORDS = /set_config|advisory|pg_temp|\btemp(?:orary)?\b|\bhold\b/i

/**
 * Could running `sql` change session state that a new upstream connection would need (a setting,
 * a prepared statement, a LISTEN, a temp table, a holdable cursor, an advisory lock)? Errs on yes.
 */
export function mayChangeSessionState(sql: string): boolean {
  if (STATE_WORDS.test(sql)) return true
  // One statement (the usual case): no need to split it.
  const statements = sql.includes(';') ? splitStatements(sql) : [stripLeadingComments(sql)]
  for (const statement of statements) {
    const verb = STATE_VERBS.exec(statement)?.[0]?.toLowerCase()
    // A SELECT changes state only through the words above (set_config, advisory) or SELECT INTO.
    if (verb === 'select' ? /\binto\b/i.test(statement) : verb !== undefined) return true
  }
  return false
}

/** One identifier as PostgreSQL's lexer reads it: "quoted" (a "" inside is a quote) or plain. */
const IDENT = String.raw`(?:"(?:[^"]|"")+"|[A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*)`
/** A SET's setting name: identifiers joined by dots, or one quoted identifier holding the dots ("app.tenant"). */
const SET_NAME = new RegExp(String.raw`\bset\s+(?:session\s+)?(${IDENT}(?:\s*\.\s*${IDENT})*)`, 'gi')

/**
 * Names of custom (dotted) settings that `sql` may set, e.g. `app.tenant` from `SET app.tenant = 'x'`
 * or `set_config('app.tenant', ...)`. PostgreSQL hides these placeholders from pg_settings, so the
 * proxy asks for them by name.
 */
export function customSettingNames(sql: string): string[] {
  const names = new Set<string>()
  for (const match of sql.matchAll(SET_NAME)) {
    const name = normalizeName(match[1] as string)
    if (name.includes('.')) names.add(name)
  }
  for (const match of sql.matchAll(/set_config\s*\(\s*'([^']+\.[^']+)'/gi)) names.add(asciiLower(match[1] as string))
  return [...names]
}

/** The name PostgreSQL makes of a dotted name: quoted parts kept as written, others folded to lower case. */
function normalizeName(name: string): string {
  return Array.from(name.matchAll(new RegExp(IDENT, 'g')), ([part]) =>
    part.startsWith('"') ? part.slice(1, -1).replaceAll('""', '"') : asciiLower(part),
  ).join('.')
}

/** PostgreSQL folds only ASCII letters in identifiers and setting names (UTF-8 databases). */
function asciiLower(text: string): string {
  return text.replace(/[A-Z]+/g, (letters) => letters.toLowerCase())
}

/**
 * Splits a query string into statements at top-level semicolons, skipping quoted strings, quoted
 * identifiers, dollar quotes and comments. Each statement is returned with leading comments and
 * whitespace removed; empty statements are dropped.
 */
export function splitStatements(sql: string): string[] {
  const statements: string[] = []
  let start = 0
  let i = 0
  const n = sql.length
  while (i < n) {
    const c = sql[i] as string
    if (c === "'" || c === '"') {
      i = skipQuoted(sql, i, c)
    } else if (c === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i)
      i = end < 0 ? n : end + 1
    } else if (c === '/' && sql[i + 1] === '*') {
      i = skipBlockComment(sql, i)
    } else if (c === '$') {
      const tag = /^\$(?:[A-Za-z_][\w]*)?\$/.exec(sql.slice(i, i + 64))?.[0]
      if (tag && !/[\w$]/.test(sql[i - 1] ?? ' ')) {
        const end = sql.indexOf(tag, i + tag.length)
        i = end < 0 ? n : end + tag.length
      } else i++
    } else if (c === ';') {
      push(statements, sql.slice(start, i))
      start = ++i
    } else i++
  }
  push(statements, sql.slice(start))
  return statements
}

function push(statements: string[], text: string): void {
  const trimmed = stripLeadingComments(text).trim()
  if (trimmed !== '') statements.push(trimmed)
}

function stripLeadingComments(text: string): string {
  let rest = text.trimStart()
  for (;;) {
    if (rest.startsWith('--')) {
      const end = rest.indexOf('\n')
      rest = end < 0 ? '' : rest.slice(end + 1).trimStart()
    } else if (rest.startsWith('/*')) {
      rest = rest.slice(skipBlockComment(rest, 0)).trimStart()
    } else return rest
  }
}

function skipQuoted(sql: string, i: number, quote: string): number {
  // E'...' strings may escape a quote with a backslash; '' doubles it in every kind.
  const escapes = quote === "'" && /[eE]/.test(sql[i - 1] ?? '') && !/[\w$]/.test(sql[i - 2] ?? ' ')
  let j = i + 1
  while (j < sql.length) {
    const c = sql[j]
    if (escapes && c === '\\') j += 2
    else if (c === quote) {
      if (sql[j + 1] === quote) j += 2
      else return j + 1
    } else j++
  }
  return sql.length
}

/** Block comments nest in PostgreSQL. */
function skipBlockComment(sql: string, i: number): number {
  let depth = 0
  let j = i
  while (j < sql.length) {
    if (sql[j] === '/' && sql[j + 1] === '*') {
      depth++
      j += 2
    } else if (sql[j] === '*' && sql[j + 1] === '/') {
      depth--
      j += 2
      if (depth === 0) return j
    } else j++
  }
  return sql.length
}

/**
 * The one `PREPARE <name> ...` statement in a query string that may hold several (PostgreSQL keeps
 * the whole string in pg_prepared_statements.statement), or undefined when it cannot be told apart.
 */
export function prepareStatementFor(queryString: string, name: string): string | undefined {
  const matches = splitStatements(queryString).filter((statement) => {
    const match = /^prepare\s+("(?:[^"]|"")+"|[A-Za-z_][\w$]*)/i.exec(statement)
    if (!match) return false
    const ident = match[1] as string
    const parsed = ident.startsWith('"') ? ident.slice(1, -1).replaceAll('""', '"') : ident.toLowerCase()
    return parsed === name
  })
  return matches.length === 1 ? matches[0] : undefined
}

/** An escape-string literal: right whatever standard_conforming_strings the client chose. */
export function quoteLiteral(value: string): string {
  return `E'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`
}

/** A quoted identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}
