/**
 * How the PostgreSQL plugin turns a role's statement list into queries (sdk/helper/strutil,
 * dbutil.QueryHelper, postgresql.go containsMultilineStatement): each list element may be
 * base64, a JSON array, or `;`-separated SQL; `{{name}}`-style keys are replaced literally,
 * without any SQL escaping.
 */

/** strutil.ParseArbitraryStringSlice: base64 → decoded first; a JSON string array → its items; else split. */
export function parseArbitraryStringSlice(input: string, separator: string): string[] {
  let text = input
  if (isStrictBase64(text)) text = Buffer.from(text, 'base64').toString('utf8')
  try {
    const parsed: unknown = JSON.parse(text)
    if (Array.isArray(parsed) && parsed.every((item) => typeof item === 'string')) return parsed
  } catch {
    // Not JSON: plain separated text.
  }
  return text
    .split(separator)
    .map((s) => s.trim())
    .filter((s) => s !== '')
}

/** Go's base64.StdEncoding accepts only canonical, padded input. */
function isStrictBase64(text: string): boolean {
  return text.length > 0 && text.length % 4 === 0 && /^[A-Z0-9+/]*={0,2}$/i.test(text)
}

/**
 * A statement containing the word END (outside quotes) is a DO $$ … END $$ block and must not be
 * split on semicolons. Like the plugin, this strips only the *last* quoted phrase before looking
 * (its loop overwrites the result each time), so keep END out of quotes when you mean it.
 */
export function containsMultilineStatement(statement: string): boolean {
  const quoted = [...(statement.match(/".*?"/g) ?? []), ...(statement.match(/'.*?'/g) ?? [])]
  let withoutLiterals = statement
  for (const literal of quoted) withoutLiterals = statement.replaceAll(literal, '')
  return /\bEND\b/.test(withoutLiterals)
}

/** dbutil.QueryHelper: literal replacement of {{key}} with the value, no escaping. */
export function substitute(query: string, values: Readonly<Record<string, string>>): string {
  let out = query
  for (const [key, value] of Object.entries(values)) out = out.replaceAll(`{{${key}}}`, value)
  return out
}

/**
 * The queries a statement list runs, in order. Creation and custom revocation keep END blocks
 * whole (`keepEndBlocks`); renew and password rotation always split.
 */
export function queriesOf(statements: readonly string[], keepEndBlocks: boolean): string[] {
  return statements.flatMap((statement) =>
    keepEndBlocks && containsMultilineStatement(statement) ? [statement] : parseArbitraryStringSlice(statement, ';'),
  )
}
