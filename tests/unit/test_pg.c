/* test_pg.c — the PostgreSQL back end's pure parts: placeholder translation. */
#include "pg.h"
#include "unit.h"

static void check_translation(const char *sql, const char *want, int want_n)
{
	char out[512];
	CHECK_EQ_INT(pg_translate(sql, out, sizeof out), want_n);
	CHECK_EQ_STR(out, want);
}

static void t_placeholders_numbered(void)
{
	check_translation("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = $1 AND b = $2", 2);
	check_translation("INSERT INTO t(a, b, c) VALUES (?, ?, ?) ON CONFLICT (a) DO NOTHING RETURNING a",
	                  "INSERT INTO t(a, b, c) VALUES ($1, $2, $3) ON CONFLICT (a) DO NOTHING RETURNING a", 3);
	check_translation("SELECT 1", "SELECT 1", 0);
}

static void t_quotes_and_comments_kept(void)
{
	/* a ? inside a string, a quoted identifier or a comment is text, not a parameter */
	check_translation("SELECT '?', \"a?\" FROM t WHERE x = ? -- why?\nAND y = ?",
	                  "SELECT '?', \"a?\" FROM t WHERE x = $1 -- why?\nAND y = $2", 2);
	check_translation("SELECT 'it''s ?' WHERE a = ?", "SELECT 'it''s ?' WHERE a = $1", 1);
	/* block comments (nested, as PostgreSQL reads them), E'' strings with backslash escapes, dollar quotes */
	check_translation("SELECT /* why? /* really? */ still? */ ?", "SELECT /* why? /* really? */ still? */ $1", 1);
	check_translation("SELECT E'it\\'s ?', e'\\\\', ? FROM t", "SELECT E'it\\'s ?', e'\\\\', $1 FROM t", 1);
	check_translation("SELECT 'a\\', ?", "SELECT 'a\\', $1", 1); /* a plain '' string has no escapes */
	check_translation("SELECT $$a ? b$$, $tag$ ? $$ ? $tag$, ?", "SELECT $$a ? b$$, $tag$ ? $$ ? $tag$, $1", 1);
	check_translation("SELECT a$b, ? FROM t", "SELECT a$b, $1 FROM t", 1); /* $ inside a name is no quote */
	/* text left open runs to the end: nothing in it is a parameter */
	check_translation("SELECT ? /* open ?", "SELECT $1 /* open ?", 1);
	check_translation("SELECT ?, 'open ?", "SELECT $1, 'open ?", 1);
}

static void t_short_buffer_refused(void)
{
	char out[8];
	CHECK_EQ_INT(pg_translate("SELECT * FROM t WHERE a = ?", out, sizeof out), -1);
	char exact[11];
	CHECK_EQ_INT(pg_translate("a = ?, ?", exact, sizeof exact), 2); /* "a = $1, $2" and its NUL: 11 bytes, fits */
	CHECK_EQ_INT(pg_translate("a = ?, ??", exact, sizeof exact), -1);
}

static const struct unit_test tests[] = {
	{ "? placeholders become $1..$n in order", t_placeholders_numbered },
	{ "? inside strings, quoted names and comments stays", t_quotes_and_comments_kept },
	{ "a translation that does not fit is refused, not cut", t_short_buffer_refused },
};
UNIT_MAIN(tests)
