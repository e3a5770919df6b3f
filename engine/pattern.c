/* pattern.c — Lua string patterns (find, match, gmatch, gsub) whose every step is counted against a budget. */
#include "pattern.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>

#include <lauxlib.h>

/*
** Why our own matcher: Lua's runs in C, where the instruction hook never
** looks, and a pattern such as ".-b" or "a?a?a?...aaa" backtracks for
** minutes on a short subject. This one follows the Lua 5.4 manual's
** semantics (single-character classes, sets, the four repetitions, captures
** and position captures, %b, %f, back references, anchors) and counts each
** step: trying an item at a position, each character a repetition or %b
** scans, each byte a back reference compares. The counts go to the caller's
** charge function, which stops the call once the request's budget is spent.
*/

#define MAX_CAPTURES 32
#define MAX_DEPTH    200 /* nested matcher calls, as Lua's MAXCCALLS */
#define CAP_OPEN     (-1)
#define CAP_POSITION (-2)
#define SPECIALS     "^$*+?.([%-"

struct capture {
	const char *at;
	ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
};

struct charger {
	void (*fn)(lua_State *L, int64_t steps);
};

struct matcher {
	lua_State *L;
	const char *src, *src_end, *p_end;
	int depth; /* calls still allowed */
	int level; /* captures open or closed so far */
	int64_t steps;
	void (*charge)(lua_State *L, int64_t steps);
	struct capture cap[MAX_CAPTURES];
};

static void step(struct matcher *m, int64_t n)
{
	m->steps += n;
	if (m->steps >= PATTERN_CHARGE_EVERY) {
		int64_t s = m->steps;
		m->steps = 0;
		m->charge(m->L, s);
	}
}

static void flush(struct matcher *m)
{
	int64_t s = m->steps;
	m->steps = 0;
	m->charge(m->L, s + 1);
}

/* The pattern byte at q, or '\0' past the end (Lua strings end with one; we do not rely on it). */
static int pat_at(const struct matcher *m, const char *q)
{
	return q < m->p_end ? (unsigned char)*q : '\0';
}

/* Just past the single-character class starting at p. */
static const char *class_end(struct matcher *m, const char *p)
{
	if (*p == '%') {
		if (p + 1 >= m->p_end)
			luaL_error(m->L, "malformed pattern (ends with '%%')");
		return p + 2;
	}
	if (*p == '[') {
		const char *q = p + 1;
		if (pat_at(m, q) == '^')
			q++;
		do { /* the first member may be ']' itself */
			if (q >= m->p_end)
				luaL_error(m->L, "malformed pattern (missing ']')");
			if (*q++ == '%' && q < m->p_end)
				q++;
		} while (q >= m->p_end || *q != ']');
		return q + 1;
	}
	return p + 1;
}

static int class_has(int c, int cl)
{
	int r;
	switch (tolower(cl)) {
	case 'a':
		r = isalpha(c);
		break;
	case 'c':
		r = iscntrl(c);
		break;
	case 'd':
		r = isdigit(c);
		break;
	case 'g':
		r = isgraph(c);
		break;
	case 'l':
		r = islower(c);
		break;
	case 'p':
		r = ispunct(c);
		break;
	case 's':
		r = isspace(c);
		break;
	case 'u':
		r = isupper(c);
		break;
	case 'w':
		r = isalnum(c);
		break;
	case 'x':
		r = isxdigit(c);
		break;
	default:
		return cl == c;
	}
	r = r != 0;
	return isupper(cl) ? !r : r;
}

/* Does c belong to the set [ ... ] that starts at p ('[') and whose ']' is at last? */
static int set_has(struct matcher *m, int c, const char *p, const char *last)
{
	int negate = 0;
	p++;
	if (*p == '^') {
		negate = 1;
		p++;
	}
	while (p < last) {
		step(m, 1);
		if (*p == '%' && p + 1 < last) {
			p++;
			if (class_has(c, (unsigned char)*p))
				return !negate;
			p++;
		} else if (p + 2 < last && p[1] == '-') {
			if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
				return !negate;
			p += 3;
		} else {
			if ((unsigned char)*p == c)
				return !negate;
			p++;
		}
	}
	return negate;
}

/* Does the class p..ep match the subject byte at s? */
static int one_matches(struct matcher *m, const char *s, const char *p, const char *ep)
{
	if (s >= m->src_end)
		return 0;
	int c = (unsigned char)*s;
	switch (*p) {
	case '.':
		return 1;
	case '%':
		return class_has(c, (unsigned char)p[1]);
	case '[':
		return set_has(m, c, p, ep - 1);
	default:
		return (unsigned char)*p == c;
	}
}

static const char *match_here(struct matcher *m, const char *s, const char *p);

static const char *balanced(struct matcher *m, const char *s, const char *p)
{
	if (p + 1 >= m->p_end)
		luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
	if (s >= m->src_end || *s != p[0])
		return NULL;
	int open = p[0], close = p[1], depth = 1;
	while (++s < m->src_end) {
		step(m, 1);
		if (*s == close) {
			if (--depth == 0)
				return s + 1;
		} else if (*s == open) {
			depth++;
		}
	}
	return NULL;
}

/* Greedy: take as many as match, then give back one at a time. */
static const char *longest(struct matcher *m, const char *s, const char *p, const char *ep)
{
	ptrdiff_t n = 0;
	while (one_matches(m, s + n, p, ep)) {
		n++;
		step(m, 1);
	}
	for (; n >= 0; n--) {
		const char *r = match_here(m, s + n, ep + 1);
		if (r)
			return r;
		step(m, 1);
	}
	return NULL;
}

/* Lazy: try the rest first, then take one more. */
static const char *shortest(struct matcher *m, const char *s, const char *p, const char *ep)
{
	for (;;) {
		const char *r = match_here(m, s, ep + 1);
		if (r)
			return r;
		if (!one_matches(m, s, p, ep))
			return NULL;
		s++;
		step(m, 1);
	}
}

static const char *open_capture(struct matcher *m, const char *s, const char *p, ptrdiff_t what)
{
	if (m->level >= MAX_CAPTURES)
		luaL_error(m->L, "too many captures");
	m->cap[m->level].at = s;
	m->cap[m->level].len = what;
	m->level++;
	const char *r = match_here(m, s, p);
	if (!r)
		m->level--;
	return r;
}

static const char *close_capture(struct matcher *m, const char *s, const char *p)
{
	int l = m->level - 1;
	while (l >= 0 && m->cap[l].len != CAP_OPEN)
		l--;
	if (l < 0)
		luaL_error(m->L, "invalid pattern capture");
	m->cap[l].len = s - m->cap[l].at;
	const char *r = match_here(m, s, p);
	if (!r)
		m->cap[l].len = CAP_OPEN;
	return r;
}

static const char *back_reference(struct matcher *m, const char *s, int digit)
{
	int l = digit - '1';
	if (l < 0 || l >= m->level || m->cap[l].len == CAP_OPEN)
		luaL_error(m->L, "invalid capture index %%%d", l + 1);
	ptrdiff_t len = m->cap[l].len;
	if (len < 0)
		return NULL; /* a position capture never matches text */
	step(m, len);
	if (m->src_end - s >= len && memcmp(m->cap[l].at, s, (size_t)len) == 0)
		return s + len;
	return NULL;
}

/* Match the pattern p..p_end at s: the end of the match, or NULL. */
static const char *match_here(struct matcher *m, const char *s, const char *p)
{
	if (m->depth-- == 0)
		luaL_error(m->L, "pattern too complex");
	const char *r = NULL;
	for (;;) {
		step(m, 1);
		if (p >= m->p_end) {
			r = s;
			break;
		}
		if (*p == '(') {
			if (pat_at(m, p + 1) == ')')
				r = open_capture(m, s, p + 2, CAP_POSITION);
			else
				r = open_capture(m, s, p + 1, CAP_OPEN);
			break;
		}
		if (*p == ')') {
			r = close_capture(m, s, p + 1);
			break;
		}
		if (*p == '$' && p + 1 == m->p_end) {
			r = s == m->src_end ? s : NULL;
			break;
		}
		if (*p == '%' && pat_at(m, p + 1) == 'b') {
			s = balanced(m, s, p + 2);
			if (!s)
				break;
			p += 4;
			continue;
		}
		if (*p == '%' && pat_at(m, p + 1) == 'f') {
			p += 2;
			if (pat_at(m, p) != '[')
				luaL_error(m->L, "missing '[' after '%%f' in pattern");
			const char *ep = class_end(m, p);
			int before = s == m->src ? '\0' : (unsigned char)s[-1];
			int here = s < m->src_end ? (unsigned char)*s : '\0';
			if (set_has(m, before, p, ep - 1) || !set_has(m, here, p, ep - 1))
				break;
			p = ep;
			continue;
		}
		if (*p == '%' && isdigit(pat_at(m, p + 1))) {
			s = back_reference(m, s, p[1]);
			if (!s)
				break;
			p += 2;
			continue;
		}
		/* a single-character class, perhaps repeated */
		const char *ep = class_end(m, p);
		int rep = pat_at(m, ep);
		if (!one_matches(m, s, p, ep)) {
			if (rep == '*' || rep == '?' || rep == '-') {
				p = ep + 1; /* zero of them is fine */
				continue;
			}
			break;
		}
		if (rep == '?') {
			r = match_here(m, s + 1, ep + 1);
			if (r)
				break;
			p = ep + 1;
			continue;
		}
		if (rep == '+') {
			r = longest(m, s + 1, p, ep);
			break;
		}
		if (rep == '*') {
			r = longest(m, s, p, ep);
			break;
		}
		if (rep == '-') {
			r = shortest(m, s, p, ep);
			break;
		}
		s++;
		p = ep;
	}
	m->depth++;
	return r;
}

static void reset(struct matcher *m)
{
	m->level = 0;
	m->depth = MAX_DEPTH;
}

static void push_capture(struct matcher *m, int i, const char *s, const char *e)
{
	if (i >= m->level) {
		if (i != 0)
			luaL_error(m->L, "invalid capture index %%%d", i + 1);
		lua_pushlstring(m->L, s, (size_t)(e - s));
		return;
	}
	ptrdiff_t len = m->cap[i].len;
	if (len == CAP_OPEN)
		luaL_error(m->L, "unfinished capture");
	if (len == CAP_POSITION)
		lua_pushinteger(m->L, (lua_Integer)(m->cap[i].at - m->src) + 1);
	else
		lua_pushlstring(m->L, m->cap[i].at, (size_t)len);
}

/* Push the captures (or the whole match when there are none and s is set); returns how many. */
static int push_captures(struct matcher *m, const char *s, const char *e)
{
	int n = (m->level == 0 && s) ? 1 : m->level;
	luaL_checkstack(m->L, n, "too many captures");
	for (int i = 0; i < n; i++)
		push_capture(m, i, s, e);
	return n;
}

static void matcher_init(struct matcher *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
	m->L = L;
	m->src = s;
	m->src_end = s + ls;
	m->p_end = p + lp;
	m->steps = 0;
	m->charge = ((struct charger *)lua_touserdata(L, lua_upvalueindex(1)))->fn;
	reset(m);
}

/* A position argument as Lua's string functions read it: 1-based, negative from the end. */
static size_t start_index(lua_Integer pos, size_t len)
{
	if (pos > 0)
		return (size_t)pos;
	if (pos == 0 || pos < -(lua_Integer)len)
		return 1;
	return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp)
{
	for (size_t i = 0; i < lp; i++)
		if (p[i] != '\0' && strchr(SPECIALS, p[i]))
			return 1;
	return 0;
}

static int find_or_match(lua_State *L, int find)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
	struct matcher m;

	if (init > ls) {
		luaL_pushfail(L);
		return 1;
	}
	matcher_init(&m, L, s, ls, p, lp);
	if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
		step(&m, (int64_t)(ls - init + lp)); /* memmem is linear: two-way matching */
		flush(&m);
		const char *at = memmem(s + init, ls - init, p, lp);
		if (!at) {
			luaL_pushfail(L);
			return 1;
		}
		lua_pushinteger(L, (lua_Integer)(at - s) + 1);
		lua_pushinteger(L, (lua_Integer)(at - s + (ptrdiff_t)lp));
		return 2;
	}
	const char *from = s + init;
	int anchor = lp > 0 && *p == '^';
	if (anchor) {
		p++;
		m.p_end = p + lp - 1;
	}
	do {
		reset(&m);
		const char *e = match_here(&m, from, p);
		if (e) {
			flush(&m);
			if (find) {
				lua_pushinteger(L, (lua_Integer)(from - s) + 1);
				lua_pushinteger(L, (lua_Integer)(e - s));
				return push_captures(&m, NULL, NULL) + 2;
			}
			return push_captures(&m, from, e);
		}
	} while (from++ < m.src_end && !anchor);
	flush(&m);
	luaL_pushfail(L);
	return 1;
}

static int l_find(lua_State *L)
{
	return find_or_match(L, 1);
}

static int l_match(lua_State *L)
{
	return find_or_match(L, 0);
}

struct gmatch_state {
	const char *from, *last;
	struct matcher m;
};

/* Upvalues: 1 charge, 2 subject, 3 pattern, 4 state. */
static int gmatch_next(lua_State *L)
{
	struct gmatch_state *g = lua_touserdata(L, lua_upvalueindex(4));
	size_t lp;
	const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
	g->m.L = L;
	for (const char *from = g->from; from <= g->m.src_end; from++) {
		reset(&g->m);
		const char *e = match_here(&g->m, from, p);
		if (e && e != g->last) {
			g->from = g->last = e;
			flush(&g->m);
			return push_captures(&g->m, from, e);
		}
	}
	flush(&g->m);
	g->from = g->m.src_end + 1;
	return 0;
}

static int l_gmatch(lua_State *L)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
	lua_settop(L, 2);
	struct gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
	if (init > ls)
		init = ls + 1;
	matcher_init(&g->m, L, s, ls, p, lp);
	g->from = s + init;
	g->last = NULL;
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_pushcclosure(L, gmatch_next, 4);
	return 1;
}

/* Append the replacement string for the match s..e: %0-%9 and %%. */
static void add_template(struct matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
	size_t l;
	const char *t = lua_tolstring(m->L, 3, &l);
	const char *end = t + l;
	step(m, (int64_t)l);
	while (t < end) {
		const char *pc = memchr(t, '%', (size_t)(end - t));
		if (!pc) {
			luaL_addlstring(b, t, (size_t)(end - t));
			break;
		}
		luaL_addlstring(b, t, (size_t)(pc - t));
		pc++;
		if (pc < end && *pc == '%') {
			luaL_addchar(b, '%');
		} else if (pc < end && isdigit((unsigned char)*pc)) {
			if (*pc == '0') {
				luaL_addlstring(b, s, (size_t)(e - s));
			} else {
				push_capture(m, *pc - '1', s, e);
				luaL_tolstring(m->L, -1, NULL);
				lua_remove(m->L, -2);
				luaL_addvalue(b);
			}
		} else {
			luaL_error(m->L, "invalid use of '%%' in replacement string");
		}
		t = pc + 1;
	}
}

/* Append the replacement for the match s..e; returns whether it changed the text. */
static int add_replacement(struct matcher *m, luaL_Buffer *b, const char *s, const char *e, int type)
{
	lua_State *L = m->L;
	if (type == LUA_TFUNCTION) {
		lua_pushvalue(L, 3);
		int n = push_captures(m, s, e);
		lua_call(L, n, 1);
	} else if (type == LUA_TTABLE) {
		push_capture(m, 0, s, e);
		lua_gettable(L, 3);
	} else {
		add_template(m, b, s, e);
		return 1;
	}
	if (!lua_toboolean(L, -1)) { /* nil or false: keep the original */
		lua_pop(L, 1);
		luaL_addlstring(b, s, (size_t)(e - s));
		return 0;
	}
	if (!lua_isstring(L, -1))
		return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
	luaL_addvalue(b);
	return 1;
}

static int l_gsub(lua_State *L)
{
	size_t ls, lp;
	const char *src = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	const char *last = NULL;
	int type = lua_type(L, 3);
	lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
	lua_Integer n = 0;
	int changed = 0;
	struct matcher m;
	luaL_Buffer b;

	luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION || type == LUA_TTABLE,
	                 3, "string/function/table");
	int anchor = lp > 0 && *p == '^';
	if (anchor) {
		p++;
		lp--;
	}
	luaL_buffinit(L, &b);
	matcher_init(&m, L, src, ls, p, lp);
	while (n < max) {
		reset(&m);
		const char *e = match_here(&m, src, p);
		if (e && e != last) {
			n++;
			changed |= add_replacement(&m, &b, src, e, type);
			src = last = e;
		} else if (src < m.src_end) {
			luaL_addchar(&b, *src++);
		} else {
			break;
		}
		if (anchor)
			break;
	}
	flush(&m);
	if (!changed) {
		lua_pushvalue(L, 1);
	} else {
		luaL_addlstring(&b, src, (size_t)(m.src_end - src));
		luaL_pushresult(&b);
	}
	lua_pushinteger(L, n);
	return 2;
}

void pattern_set_functions(lua_State *L, void (*charge)(lua_State *L, int64_t steps))
{
	static const luaL_Reg fns[] = { { "find", l_find },
		                        { "match", l_match },
		                        { "gmatch", l_gmatch },
		                        { "gsub", l_gsub },
		                        { NULL, NULL } };
	struct charger *c = lua_newuserdatauv(L, sizeof *c, 0);
	c->fn = charge;
	luaL_setfuncs(L, fns, 1);
}
