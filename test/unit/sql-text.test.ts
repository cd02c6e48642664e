import t from 'tap'
import {
  charactersExamined,
  customSettingNames,
  hasStatementStartingWith,
  mayChangeSessionState,
  prepareStatementFor,
  splitStatements,
} from '../../src/pgwire/sql-text.js'

// What pgbench's built-in TPC-B script sends: every one of these is on the hot path, where a
// false positive costs a state probe per transaction.
const PGBENCH = [
  'BEGIN;',
  'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1;',
  'SELECT abalance FROM pgbench_accounts WHERE aid = 1;',
  'UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1;',
  'UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;',
  'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP);',
  'END;',
]

void t.test('mayChangeSessionState: state verbs at the start of a statement', async (t) => {
  for (const sql of [
    "SET app.tenant = 'x'",
    'set search_path to a, public',
    'SET ROLE reporting',
    'sEt TimeZone = UTC',
    'RESET ALL',
    'reset search_path',
    'PREPARE p (int) AS SELECT $1',
    'DEALLOCATE ALL',
    'LISTEN jobs',
    'UNLISTEN *',
    'DISCARD ALL',
    'DECLARE c CURSOR FOR SELECT 1',
    'CREATE TEMP TABLE t (a int)',
    'create temporary table t (a int)',
    'DO $$ BEGIN PERFORM 1; END $$',
    'CALL do_things()',
    "LOAD 'auto_explain'",
    '  \n\tSET x.y = 1',
  ])
    t.ok(mayChangeSessionState(sql), sql)
})

void t.test('mayChangeSessionState: after leading comments, nested block comments included', async (t) => {
  for (const sql of [
    '-- set the tenant\nSET app.tenant = 1',
    '-- one\n-- two\nLISTEN ch',
    '/* a comment */ DISCARD ALL',
    '/* outer /* inner */ still a comment; */ RESET ALL',
    '/* c */ -- d\n/* e */ PREPARE p AS SELECT 1',
  ])
    t.ok(mayChangeSessionState(sql), sql)
})

void t.test('mayChangeSessionState: in a later statement of a multi-statement string', async (t) => {
  for (const sql of [
    'select 1; set x.y = 1',
    'BEGIN; SET LOCAL statement_timeout = 0; COMMIT',
    "select ';'; listen ch",
    'select 1;\n-- then\nprepare p as select 2',
    'select 1; /* a /* b */ c */ unlisten ch',
    'select $$;$$; discard temp',
  ])
    t.ok(mayChangeSessionState(sql), sql)
})

void t.test('mayChangeSessionState: SELECTs that change state', async (t) => {
  for (const sql of [
    "select set_config('app.user_id', $1, false)",
    "SELECT pg_catalog.set_config('search_path', 'a', false)",
    'SELECT pg_advisory_lock(1)',
    'select pg_try_advisory_lock(42)',
    'SELECT * INTO new_table FROM t',
    'select 1; select a into b from c',
    'DECLARE c CURSOR WITH HOLD FOR SELECT 1',
    'select * from pg_temp.scratch',
  ])
    t.ok(mayChangeSessionState(sql), sql)
})

void t.test('mayChangeSessionState: the hot path stays false', async (t) => {
  for (const sql of [
    ...PGBENCH,
    PGBENCH.join(' '),
    'BEGIN',
    'END',
    'COMMIT',
    'ROLLBACK',
    'START TRANSACTION ISOLATION LEVEL REPEATABLE READ',
    'SELECT * FROM pgbench_branches',
    'update t set a = 1 where id = 2',
    'insert into t select * from s',
    'with x as (select 1) select * from x',
    'select setting from pg_settings',
    'select temperature, threshold from household',
    'delete from t where id = $1',
    '',
    '   ',
    '-- only a comment',
  ])
    t.notOk(mayChangeSessionState(sql), JSON.stringify(sql))
})

void t.test('mayChangeSessionState: SET in a string literal or a comment is not a SET', async (t) => {
  // Either answer would be safe (a false positive costs one probe); the code gets these right.
  for (const sql of [
    "select 'set x = 1'",
    "select 'a; set x = 1'",
    'select 1 -- set x = 1',
    '/* set x = 1 */ select 1',
    'select "set x" from t',
    'select $$; listen ch$$',
  ])
    t.notOk(mayChangeSessionState(sql), sql)
})

void t.test('splitStatements: quotes, dollar quotes and comments hide semicolons', async (t) => {
  const cases: Array<[string, string[]]> = [
    ['select 1; select 2', ['select 1', 'select 2']],
    ["select ';'; select 2", ["select ';'", 'select 2']],
    ["select 'it''s; fine'; select 2", ["select 'it''s; fine'", 'select 2']],
    ["select E'\\';'; select 2", ["select E'\\';'", 'select 2']],
    ["select e'\\\\'; select 2", ["select e'\\\\'", 'select 2']],
    // Without E, a backslash is an ordinary character (standard_conforming_strings = on).
    ["select 'a\\'; select 2", ["select 'a\\'", 'select 2']],
    ['select "quoted;ident" from t; select 2', ['select "quoted;ident" from t', 'select 2']],
    ['select "a"";b"; select 2', ['select "a"";b"', 'select 2']],
    ['select $$a;b$$; select 2', ['select $$a;b$$', 'select 2']],
    ['select $tag$ ; $$ ; $tag$; select 2', ['select $tag$ ; $$ ; $tag$', 'select 2']],
    ['select $_x1$;$_x1$; select 2', ['select $_x1$;$_x1$', 'select 2']],
    // $1 is a parameter and a$b$c an identifier, not dollar quotes.
    ['select $1; select 2', ['select $1', 'select 2']],
    ['select a$b$c; select 2', ['select a$b$c', 'select 2']],
    ['select 1 -- not; a split\n, 2; select 3', ['select 1 -- not; a split\n, 2', 'select 3']],
    [
      'select 1 /* not; /* nested; */ a split; */, 2; select 3',
      ['select 1 /* not; /* nested; */ a split; */, 2', 'select 3'],
    ],
  ]
  for (const [sql, expected] of cases) t.same(splitStatements(sql), expected, sql)
})

void t.test('splitStatements: leading comments and whitespace go, empty statements are dropped', async (t) => {
  t.same(splitStatements('-- c;\nselect 1; select 2'), ['select 1', 'select 2'])
  t.same(splitStatements('/* a /* b; */ c; */ select 1;\n  /* d */ -- e\n select 2'), ['select 1', 'select 2'])
  t.same(splitStatements(';;select 1;; ;\n;'), ['select 1'])
  t.same(splitStatements('select 1 '), ['select 1'])
  t.same(splitStatements(''), [])
  t.same(splitStatements('  \n '), [])
  t.same(splitStatements('-- only a comment'), [])
  t.same(splitStatements('/* only /* nested */ comments */ -- and this'), [])
})

void t.test('splitStatements: an unterminated quote or comment runs to the end', async (t) => {
  t.same(splitStatements("select 'abc; select 2"), ["select 'abc; select 2"])
  t.same(splitStatements('select $$abc; select 2'), ['select $$abc; select 2'])
  t.same(splitStatements('select 1 /* abc; select 2'), ['select 1 /* abc; select 2'])
  t.same(splitStatements('select 1; /* abc; select 2'), ['select 1'])
})

void t.test('prepareStatementFor: the one PREPARE of that name in a query string', async (t) => {
  t.equal(prepareStatementFor('select 1; prepare p2 as select 2; set x=1', 'p2'), 'prepare p2 as select 2')
  t.equal(prepareStatementFor('PREPARE p (int, text) AS SELECT $1, $2;', 'p'), 'PREPARE p (int, text) AS SELECT $1, $2')
  t.equal(prepareStatementFor('prepare p(int) as select $1', 'p'), 'prepare p(int) as select $1')
  t.equal(prepareStatementFor("prepare p as select ';'; select 2", 'p'), "prepare p as select ';'")
  t.equal(prepareStatementFor('/* c */ -- d\nprepare p as select 1', 'p'), 'prepare p as select 1')
  t.equal(prepareStatementFor('PREPARE p\n  AS select 1', 'p'), 'PREPARE p\n  AS select 1')
})

void t.test('prepareStatementFor: names are folded and unquoted as PostgreSQL does', async (t) => {
  t.equal(prepareStatementFor('PREPARE "Mixed" AS SELECT 1', 'Mixed'), 'PREPARE "Mixed" AS SELECT 1')
  t.equal(prepareStatementFor('PREPARE "Mixed" AS SELECT 1', 'mixed'), undefined)
  t.equal(prepareStatementFor('PREPARE Upper AS SELECT 1', 'upper'), 'PREPARE Upper AS SELECT 1')
  t.equal(prepareStatementFor('PREPARE Upper AS SELECT 1', 'Upper'), undefined)
  t.equal(prepareStatementFor('prepare "a""b" as select 1', 'a"b'), 'prepare "a""b" as select 1')
  t.equal(prepareStatementFor('prepare "with space" as select 1', 'with space'), 'prepare "with space" as select 1')
})

void t.test('prepareStatementFor: two PREPAREs, and names that are not there', async (t) => {
  const two = 'prepare a as select 1; prepare b as select 2'
  t.equal(prepareStatementFor(two, 'a'), 'prepare a as select 1')
  t.equal(prepareStatementFor(two, 'b'), 'prepare b as select 2')
  t.equal(prepareStatementFor(two, 'c'), undefined)
  t.equal(prepareStatementFor('prepare p2 as select 2', 'p'), undefined, 'a longer name is another name')
  t.equal(prepareStatementFor("select 'prepare p as select 1'", 'p'), undefined, 'inside a string')
  t.equal(prepareStatementFor('-- prepare p as select 1\nselect 1', 'p'), undefined, 'inside a comment')
  t.equal(
    prepareStatementFor('prepare p as select 1; deallocate p; prepare p as select 2', 'p'),
    undefined,
    'the same name twice cannot be told apart',
  )
})

void t.test('customSettingNames: dotted names from SET and set_config', async (t) => {
  t.same(customSettingNames("SET app.tenant = 'x'"), ['app.tenant'])
  t.same(customSettingNames("SET App.Tenant TO 'x'"), ['app.tenant'])
  t.same(customSettingNames('set session "My".Setting to 1'), ['My.setting'])
  t.same(customSettingNames('SET "App"."Tenant" = 1'), ['App.Tenant'])
  t.same(customSettingNames('set app . tenant = 1'), ['app.tenant'])
  t.same(customSettingNames("select set_config('app.user_id', $1, false)"), ['app.user_id'])
  t.same(customSettingNames("select set_config ( 'App.User', 'x', false)"), ['app.user'])
  t.same(customSettingNames("DO $$ BEGIN PERFORM set_config('app.a', '1', false); SET app.b = 2; END $$"), [
    'app.b',
    'app.a',
  ])
})

void t.test('customSettingNames: each name once, and nothing for built-in settings', async (t) => {
  t.same(customSettingNames("set app.a = 1; SET APP.A = 2; select set_config('app.a', '3', false)"), ['app.a'])
  t.same(customSettingNames('SET search_path = a'), [])
  t.same(customSettingNames('SET SESSION AUTHORIZATION DEFAULT'), [])
  t.same(customSettingNames('SET TIME ZONE UTC'), [])
  t.same(customSettingNames("select set_config('search_path', 'a', false)"), [])
  t.same(customSettingNames('update t set a = b.c'), [])
  t.same(customSettingNames(PGBENCH.join(' ')), [])
})

void t.test('customSettingNames: names PostgreSQL accepts that a naive split gets wrong', async (t) => {
  // One quoted identifier holding the dot: PostgreSQL's name is app.tenant.
  t.same(customSettingNames(`SET "app.tenant" = 'x'`), ['app.tenant'])
  // More than two parts are allowed (PostgreSQL 15: "two or more simple identifiers separated by dots").
  t.same(customSettingNames('SET a.b.c = 1'), ['a.b.c'])
  t.same(customSettingNames('SET "a""b".c = 1'), ['a"b.c'])
  // Only ASCII letters fold: with UTF-8, SET app.Äb names app.Äb, which current_setting('app.äb') does not find.
  t.same(customSettingNames('SET app.Äb = 1'), ['app.Äb'])
  t.same(customSettingNames("select set_config('App.Äb', '1', false)"), ['app.Äb'])
})

void t.test('customSettingNames: SET SESSION, strings and dollar-quoted bodies', async (t) => {
  t.same(customSettingNames('SET session.x = 1'), ['session.x'], '"session" as the first part')
  t.same(customSettingNames('SET SESSION session.x = 1'), ['session.x'])
  t.same(customSettingNames('SET LOCAL app.x = 1'), [], 'SET LOCAL ends with the transaction')
  t.same(customSettingNames("select set_config(E'app.\\\\x', '1', false)"), ['app.\\x'], 'E string: a backslash escapes')
  t.same(customSettingNames("select set_config(E'app\\.y', '1', false)"), ['app.y'])
  t.same(customSettingNames("select set_config('a''b.c', '1', false)"), ["a'b.c"])
  t.same(customSettingNames("select set_config('.x', '1', false), set_config('x.', '1', false)"), [])
  t.same(customSettingNames('DO $fn$ BEGIN SET app.in_body = 1; END $fn$; SET app.after = 2'), ['app.in_body', 'app.after'])
  // The body ends at its closing tag even inside what looks like a string in it, as in PostgreSQL.
  t.same(customSettingNames("DO $$ BEGIN RAISE NOTICE 'x$$; SET app.out = 1"), ['app.out'])
  t.same(customSettingNames("select 'set app.in_string = 1' -- set app.in_comment = 1"), [])
})

void t.test('mayChangeSessionState: INTO only as a word of the SELECT itself', async (t) => {
  t.ok(mayChangeSessionState('select 1 as a into t'))
  t.notOk(mayChangeSessionState("select 'into'"))
  t.notOk(mayChangeSessionState('select "into" from t'))
  t.notOk(mayChangeSessionState('insert into t values (1)'))
  // Words that change state still count anywhere, comments included (a false positive costs one probe).
  t.ok(mayChangeSessionState("select 1 -- set_config('"))
})

void t.test('hasStatementStartingWith: the first word of any statement, after comments', async (t) => {
  t.ok(hasStatementStartingWith('EXECUTE p(1)', 'execute'))
  t.ok(hasStatementStartingWith('select 1; execute p', 'execute'))
  t.ok(hasStatementStartingWith('/* c */ -- d\n  ExEcUtE p', 'execute'))
  t.notOk(hasStatementStartingWith("select 'execute p'", 'execute'))
  t.notOk(hasStatementStartingWith('select execute_it()', 'execute'))
  t.notOk(hasStatementStartingWith('explain execute p', 'execute'))
  t.notOk(hasStatementStartingWith('select $$; execute p$$', 'execute'))
  t.notOk(hasStatementStartingWith('executes p', 'execute'))
})

// Worst cases for the regular expressions these functions replaced, and for the scanner itself:
// unterminated quotes, comments and dollar quotes, almost-tags, deep comment nesting, long words.
const ADVERSARIAL: Record<string, (size: number) => string> = {
  'set_config dots (the reported case)': (size) => "select 1 -- set_config('" + '.'.repeat(size),
  'set_config dots, no comment': (size) => "set_config('" + 'a.'.repeat(size / 2),
  'many set words': (size) => 'set '.repeat(size / 4),
  'many set "': (size) => 'set "'.repeat(size / 5),
  'many set session': (size) => 'set session '.repeat(size / 12),
  'a long dotted name': (size) => 'set a' + ' . a'.repeat(size / 4),
  'many set_config(': (size) => "set_config('".repeat(size / 12),
  'single quotes': (size) => "'".repeat(size),
  'double quotes': (size) => '"'.repeat(size),
  'E strings and backslashes': (size) => "e'\\".repeat(size / 3),
  'dollars': (size) => '$'.repeat(size),
  'almost dollar tags': (size) => '$abc'.repeat(size / 4),
  'dollar tags': (size) => '$a$'.repeat(size / 3),
  'a long tag and near misses': (size) =>
    `$${'t'.repeat(size / 4)}$` + `$${'t'.repeat(size / 4 - 1)}x`.repeat(2) + '$t'.repeat(size / 8),
  'many ;execute': (size) => ';execute'.repeat(size / 8),
  'semicolons and whitespace': (size) => '; \t\n'.repeat(size / 4),
  'nested comment openers': (size) => '/*'.repeat(size / 2),
  'line comments': (size) => '--'.repeat(size / 2),
  'prepare statements': (size) => ';prepare "p'.repeat(size / 11),
  'one long word': (size) => 'settemporary'.repeat(size / 12),
}
const SCANNERS: Record<string, (sql: string) => unknown> = {
  mayChangeSessionState,
  customSettingNames,
  splitStatements,
  prepareStatementFor: (sql) => prepareStatementFor(sql, 'p'),
  hasStatementStartingWith: (sql) => hasStatementStartingWith(sql, 'execute'),
}

void t.test('every scanner examines each character of a 1 MB adversarial text a bounded number of times', async (t) => {
  const MB = 1 << 20
  const examinedFor = (scan: (sql: string) => unknown, sql: string): number => {
    const before = charactersExamined()
    scan(sql)
    return charactersExamined() - before
  }
  for (const [scannerName, scan] of Object.entries(SCANNERS)) {
    for (const [inputName, make] of Object.entries(ADVERSARIAL)) {
      const one = make(MB)
      const two = make(2 * MB)
      const steps = examinedFor(scan, one)
      const doubled = examinedFor(scan, two)
      // At most a few dozen looks per character, and twice the text costs twice the work: a
      // quadratic scan would need about 10^12 steps here.
      t.ok(steps <= 40 * one.length, `${scannerName}, ${inputName}: ${steps} steps for ${one.length} characters`)
      t.ok(doubled <= 2.1 * steps + 64, `${scannerName}, ${inputName}: ${doubled} steps for twice the text`)
    }
  }
})

void t.test('the step count is honest: it grows with the text', async (t) => {
  const before = charactersExamined()
  splitStatements('select 1; select 2')
  const small = charactersExamined() - before
  splitStatements('select 1; select 2'.repeat(100))
  t.ok(small >= 'select 1; select 2'.length, 'at least one step per character')
  t.ok(charactersExamined() - before - small >= 100 * 'select 1; select 2'.length, 'and so for a hundred times the text')
})
