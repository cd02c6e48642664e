/**
 * ParameterStatus names and values, shared between sessions. Every login receives the same dozen or
 * so reports (server_version, client_encoding, DateStyle, TimeZone, ...; the GUC_REPORT settings of
 * src/backend/utils/misc/guc_tables.c), mostly with the same values, and each session keeps them
 * for its life: one string per distinct name or value instead of two per session and parameter.
 *
 * Bounded: at most MAX_SHARED strings of at most MAX_SHARED_LENGTH bytes each are kept (what clients
 * choose, such as application_name, can be anything); past that, strings are simply not shared.
 */
const MAX_SHARED = 512
const MAX_SHARED_LENGTH = 64
const shared = new Map<string, string>()

/** `text`, or an equal string already held, so that equal reports share one string. */
export function sharedParameterString(text: string): string {
  if (text.length > MAX_SHARED_LENGTH) return text
  const known = shared.get(text)
  if (known !== undefined) return known
  if (shared.size < MAX_SHARED) shared.set(text, text)
  return text
}
