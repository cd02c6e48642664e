// Startup parameters a pooled server connection can be given for a new client with
// set_config(), instead of needing a connection that was logged in with the same value.
//
// Each one is reported by the server with ParameterStatus (GUC_REPORT in
// src/backend/utils/misc/guc_tables.c; the list is in "Asynchronous Operations",
// https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-ASYNC), so the proxy knows the
// connection's current value and the client's greeting can carry the client's own, and each is
// PGC_USERSET, so set_config() in a session ends where the startup packet would have put it.
//
// Left out, though reported:
// - server_version, server_encoding, integer_datetimes, in_hot_standby: fixed by the server.
// - is_superuser, session_authorization: follow the login and role, which the proxy owns.
// - DateStyle: assigning only part of it (`iso`) keeps the other part (the field order) from the
//   current value (https://www.postgresql.org/docs/15/runtime-config-client.html#GUC-DATESTYLE), so on
//   a connection whose first client sent `SQL, DMY` the result would differ from a fresh login's.
//
// Newer servers report more: scram_iterations (16), search_path (18). Both are user-settable and
// listed. A server that does not report one (search_path before 18) gets it set on every link; one
// that does not know it (scram_iterations before 16) refuses it at login, so no pooled connection
// has it.

/** Lower-case name (GUC names are case-insensitive) to the name the server reports it by. */
const LINKABLE = new Map(
  [
    'application_name',
    'client_encoding',
    'IntervalStyle',
    'TimeZone',
    'standard_conforming_strings',
    'default_transaction_read_only',
    'scram_iterations',
    'search_path',
  ].map((reported) => [reported.toLowerCase(), reported]),
)

/**
 * The name ParameterStatus reports a startup parameter by, when the parameter is linkable;
 * undefined otherwise. PostgreSQL compares GUC names ignoring ASCII case (guc_name_compare), so
 * `timezone` (what libpq sends for PGTZ) and `TimeZone` are one parameter.
 */
export function linkableName(name: string): string | undefined {
  return LINKABLE.get(name.replace(/[A-Z]/g, (c) => c.toLowerCase()))
}
