/*
 * check - the one harness of the C unit tests (tests/unit/test_*.c).
 *
 * CHECK(name, cond) prints "PASS name" when cond holds, else "FAIL name: cond (line N)",
 * one line each, the format tests/run.py counts, and counts the failures in `failures`.
 * A test's main() ends with `return failures ? 1 : 0;`. A unit test is a file
 * tests/unit/test_X.c whose first line names what it links ("// links: a.c b.c"): the
 * Makefile builds and tests/run.py runs every one, with no edit of either.
 */
#ifndef SPOOLD_TEST_CHECK_H
#define SPOOLD_TEST_CHECK_H

#include <stdio.h>

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

#endif
