/*
 * check - the one harness of the C unit tests (tests/unit/test_*.c).
 *
 * CHECK(name, cond) prints "PASS name" when cond holds, else "FAIL name: cond (line N)",
 * one line each, the format tests/run.py counts, and counts the failures in `failures`.
 * CHECK_ROW(table, row, cond) is the same for one row of a table of cases, named
 * "table/row" (write the cases as a static array of {name, input, want} and loop over it).
 * A test's main() ends with `return failures ? 1 : 0;`. A unit test is a file
 * tests/unit/test_X.c whose first line names what it links ("// links: a.c b.c"): the
 * Makefile builds and tests/run.py runs every one, with no edit of either.
 */
#ifndef SPOOLD_TEST_CHECK_H
#define SPOOLD_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(name, cond)                                                                          \
	do {                                                                                       \
		if (cond)                                                                          \
			printf("PASS %s\n", name);                                                 \
		else {                                                                             \
			printf("FAIL %s: %s (line %d)\n", name, #cond, __LINE__);                  \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_ROW(table, row, cond)                                                                \
	do {                                                                                       \
		char check_name_[256];                                                             \
		snprintf(check_name_, sizeof check_name_, "%s/%s", table, row);                    \
		CHECK(check_name_, cond);                                                          \
	} while (0)

/* 1 when got (len bytes, not NUL-terminated) is the string want; else 0, and the two are
 * printed, so that a failing row shows what it got. */
static inline int check_bytes_are(const char *got, size_t len, const char *want)
{
	if (len == strlen(want) && memcmp(got, want, len) == 0)
		return 1;
	printf("  got  \"%.*s\"\n  want \"%s\"\n", (int)len, got, want);
	return 0;
}

#endif
