/* unit.h — a tiny C test harness: a table of named tests, CHECK macros, and a main that reports. */
#ifndef PAYGATE_UNIT_H
#define PAYGATE_UNIT_H

/*
** Usage, in a test program:
**
**     static void t_base64_round_trip(void) { CHECK_EQ_INT(f(), 0); }
**     static const struct unit_test tests[] = {
**         {"base64 round-trips every length", t_base64_round_trip},
**     };
**     UNIT_MAIN(tests)
**
** Each failed CHECK prints "#   file:line: what" and marks the running test failed;
** the test goes on. main prints "ok - name" or "not ok - name" per test, then
** "N passed, N failed", and exits 1 if any test failed. An optional argument runs
** only the tests whose name contains it. Test data files are found under
** $PAYGATE_VECTORS, else UNIT_VECTORS_DIR (default "tests/vectors", from the repo root);
** if its README.md cannot be read, main reports one failure instead of running tests.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef UNIT_VECTORS_DIR
#define UNIT_VECTORS_DIR "tests/vectors"
#endif

struct unit_test {
	const char *name;
	void (*fn)(void);
};

static int unit_failed_checks;

static inline void unit_fail(const char *file, int line, const char *what)
{
	printf("#   %s:%d: %s\n", file, line, what);
	unit_failed_checks++;
}

/* Prints up to 160 bytes of a value, escaping non-printable bytes. */
static inline void unit_show(const char *label, const void *p, size_t n)
{
	const unsigned char *s = p;
	size_t i;

	printf("#     %s (%zu bytes): ", label, n);
	for (i = 0; s != NULL && i < n && i < 160; i++)
		printf(s[i] >= 0x20 && s[i] < 0x7f ? "%c" : "\\x%02x", s[i]);
	printf("%s\n", n > 160 ? "..." : "");
}

static inline void unit_eq_mem(const char *file, int line, const char *what, const void *a, size_t alen, const void *b,
                               size_t blen)
{
	if (a != NULL && b != NULL && alen == blen && memcmp(a, b, alen) == 0)
		return;
	unit_fail(file, line, what);
	unit_show("got", a, a != NULL ? alen : 0);
	unit_show("expected", b, b != NULL ? blen : 0);
}

static inline void unit_eq_long(const char *file, int line, const char *what, long long a, long long b)
{
	if (a == b)
		return;
	unit_fail(file, line, what);
	printf("#     got %lld, expected %lld\n", a, b);
}

#define CHECK(cond)                                           \
	do {                                                  \
		if (!(cond))                                  \
			unit_fail(__FILE__, __LINE__, #cond); \
	} while (0)
#define CHECK_EQ_INT(a, b)             unit_eq_long(__FILE__, __LINE__, #a " == " #b, (long long)(a), (long long)(b))
#define CHECK_EQ_MEM(a, alen, b, blen) unit_eq_mem(__FILE__, __LINE__, #a " == " #b, a, alen, b, blen)
#define CHECK_EQ_STR(a, b)                                                                                     \
	do {                                                                                                   \
		const char *unit_a_ = (const char *)(a), *unit_b_ = (const char *)(b);                         \
		unit_eq_mem(__FILE__, __LINE__, #a " == " #b, unit_a_, unit_a_ ? strlen(unit_a_) : 0, unit_b_, \
		            unit_b_ ? strlen(unit_b_) : 0);                                                    \
	} while (0)

/* Path of a file under the vectors directory (static buffer: use before the next call). */
static inline const char *unit_vector(const char *name)
{
	static char path[1024];
	const char *dir = getenv("PAYGATE_VECTORS");

	snprintf(path, sizeof path, "%s/%s", dir != NULL && dir[0] ? dir : UNIT_VECTORS_DIR, name);
	return path;
}

static inline int unit_run(const struct unit_test *tests, size_t n, int argc, char **argv)
{
	size_t i, passed = 0, failed = 0;
	FILE *probe = fopen(unit_vector("README.md"), "r");

	if (probe == NULL) {
		printf("# cannot read %s: run from the repository root or set PAYGATE_VECTORS\n",
		       unit_vector("README.md"));
		printf("0 passed, 1 failed\n");
		return 1;
	}
	fclose(probe);
	for (i = 0; i < n; i++) {
		if (argc > 1 && strstr(tests[i].name, argv[1]) == NULL)
			continue;
		unit_failed_checks = 0;
		tests[i].fn();
		printf("%s - %s\n", unit_failed_checks ? "not ok" : "ok", tests[i].name);
		if (unit_failed_checks)
			failed++;
		else
			passed++;
	}
	printf("%zu passed, %zu failed\n", passed, failed);
	return failed ? 1 : 0;
}

#define UNIT_MAIN(tests)                                                            \
	int main(int argc, char **argv)                                             \
	{                                                                           \
		return unit_run(tests, sizeof tests / sizeof tests[0], argc, argv); \
	}

#endif
