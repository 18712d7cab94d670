// links: scanner-runner/[!r]*.c -llmdb
/*
 * test_scanner - the scanner layer's pure decisions (scanner-runner/scanner.c), as tables
 * of cases: scanner_exit_map (which exec results may be clean or infected: only a mapped
 * exit code of a child reaped with its whole output; everything else an error) and
 * scanner_virus_name (the name from the first output line the regex matches, by group,
 * bounded), and scanner_setup's choice of backend per mode. It links every file of
 * scanner-runner/ but runner.c (the stage's main): the backends are in the ops tables.
 */
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "scanner.h"

static int clean_0[] = {0};
static int infected_1[] = {1};
static int clean_0_10[] = {0, 10};
static int infected_1_2_3[] = {1, 2, 3};

/* exec_result fields that matter to the mapping; the rest stays 0. */
struct res_case {
	const char *name;
	int codes; /* 0: clean {0} infected {1}; 1: clean {0,10} infected {1,2,3}; 2: none */
	int exited, exit_code, signaled, timed_out, exec_failed, wait_failed, not_started;
	int truncated;
	enum verdict want;
};

static const struct res_case res_cases[] = {
    {"exit-0-clean", 0, 1, 0, 0, 0, 0, 0, 0, 0, V_CLEAN},
    {"exit-1-infected", 0, 1, 1, 0, 0, 0, 0, 0, 0, V_INFECTED},
    {"exit-2-unlisted", 0, 1, 2, 0, 0, 0, 0, 0, 0, V_ERROR},
    {"exit-255-unlisted", 0, 1, 255, 0, 0, 0, 0, 0, 0, V_ERROR},
    {"exit-10-second-clean", 1, 1, 10, 0, 0, 0, 0, 0, 0, V_CLEAN},
    {"exit-3-last-infected", 1, 1, 3, 0, 0, 0, 0, 0, 0, V_INFECTED},
    {"exit-4-between", 1, 1, 4, 0, 0, 0, 0, 0, 0, V_ERROR},
    {"no-codes-exit-0", 2, 1, 0, 0, 0, 0, 0, 0, 0, V_ERROR},
    {"no-codes-exit-1", 2, 1, 1, 0, 0, 0, 0, 0, 0, V_ERROR},
    /* The whole answer or nothing: output not read in full may hide a virus name. */
    {"clean-exit-truncated", 0, 1, 0, 0, 0, 0, 0, 0, 1, V_ERROR},
    {"infected-exit-truncated", 0, 1, 1, 0, 0, 0, 0, 0, 1, V_ERROR},
    /* No status of a child that ran to its end: never a verdict. */
    {"signaled", 0, 0, 0, 1, 0, 0, 0, 0, 0, V_ERROR},
    {"timed-out-exit-0", 0, 1, 0, 0, 1, 0, 0, 0, 0, V_ERROR},
    {"exec-failed-127", 0, 1, 127, 0, 0, 1, 0, 0, 0, V_ERROR},
    {"exec-failed-code-0", 0, 1, 0, 0, 0, 1, 0, 0, 0, V_ERROR},
    {"wait-failed", 0, 0, 0, 0, 0, 0, 1, 0, 0, V_ERROR},
    {"wait-failed-code-0", 0, 1, 0, 0, 0, 0, 1, 0, 0, V_ERROR},
    {"not-started", 0, 0, 0, 0, 0, 0, 0, 1, 0, V_ERROR},
    {"not-started-code-0", 0, 1, 0, 0, 0, 0, 0, 1, 0, V_ERROR},
    {"not-exited-code-0", 0, 0, 0, 0, 0, 0, 0, 0, 0, V_ERROR},
};

static void test_exit_map(void)
{
	for (size_t i = 0; i < sizeof res_cases / sizeof res_cases[0]; i++) {
		const struct res_case *c = &res_cases[i];
		struct conf_scanner sc;
		struct exec_result res;
		memset(&sc, 0, sizeof sc);
		memset(&res, 0, sizeof res);
		sc.name = "t";
		if (c->codes == 0) {
			sc.clean_codes = clean_0;
			sc.n_clean = 1;
			sc.infected_codes = infected_1;
			sc.n_infected = 1;
		} else if (c->codes == 1) {
			sc.clean_codes = clean_0_10;
			sc.n_clean = 2;
			sc.infected_codes = infected_1_2_3;
			sc.n_infected = 3;
		}
		res.exited = c->exited;
		res.exit_code = c->exit_code;
		res.signaled = c->signaled;
		res.signo = c->signaled ? 9 : 0;
		res.timed_out = c->timed_out;
		res.exec_failed = c->exec_failed;
		res.wait_failed = c->wait_failed;
		res.not_started = c->not_started;
		res.output_truncated = c->truncated;
		enum verdict got = scanner_exit_map(&sc, &res);
		if (got != c->want)
			printf("  got %s, want %s\n", verdict_name(got), verdict_name(c->want));
		CHECK_ROW("exit_map", c->name, got == c->want);
	}
}

struct name_case {
	const char *name;
	const char *regex; /* NULL: the scanner has no virus_regex */
	const char *out;   /* NULL: no output at all */
	size_t len;        /* the name buffer */
	const char *want;
};

static const struct name_case name_cases[] = {
    {"clamscan-line", ": (.+) FOUND$", "/s/0001.ATT: Eicar-Test-Signature FOUND\n", 256,
     "Eicar-Test-Signature"},
    {"no-trailing-newline", ": (.+) FOUND$", "/s/0001.ATT: Win.Test.X FOUND", 256, "Win.Test.X"},
    {"first-matching-line", ": (.+) FOUND$",
     "/s/0001.ATT: OK\n/s/0002.ATT: First FOUND\n/s/0003.ATT: Second FOUND\n", 256, "First"},
    {"no-match", ": (.+) FOUND$", "/s/0001.ATT: OK\n", 256, ""},
    {"empty-output", ": (.+) FOUND$", "", 256, ""},
    {"no-output", ": (.+) FOUND$", NULL, 256, ""},
    {"no-regex", NULL, "/s/0001.ATT: Eicar FOUND\n", 256, ""},
    /* Two or more groups: the second is the name, whatever follows. */
    {"two-groups", "^(.*): (.+) FOUND$", "/s/0001.ATT: Eicar FOUND\n", 256, "Eicar"},
    {"three-groups-takes-second", "^(.*): ([A-Za-z]+)(-[0-9]+)? FOUND$",
     "/s/0001.ATT: Eicar-42 FOUND\n", 256, "Eicar"},
    /* A regex without a group names nothing, even when it matches. */
    {"no-group", "FOUND", "/s/0001.ATT: Eicar FOUND\n", 256, ""},
    /* The name group did not take part in the match: look at the next line. */
    {"unmatched-group-then-next-line", "^v(=([a-z]+))?$", "v\nv=abc\n", 256, "abc"},
    {"cut-to-buffer", ": (.+) FOUND$", "/s/0001.ATT: abcdefgh FOUND\n", 5, "abcd"},
    {"buffer-of-one", ": (.+) FOUND$", "/s/0001.ATT: abcdefgh FOUND\n", 1, ""},
    /* One line at a time: a name never spans a newline. */
    {"no-name-across-lines", "X: (.+) FOUND", "X: a\nb FOUND\n", 256, ""},
    /* A CR before the newline is part of the line: "$" does not match before it. */
    {"crlf-line-end", ": (.+) FOUND$", "/s/0001.ATT: Eicar FOUND\r\n", 256, ""},
    {"crlf-tolerant-regex", ": (.+) FOUND\r?$", "/s/0001.ATT: Eicar FOUND\r\n", 256, "Eicar"},
    {"empty-lines-skipped", ": (.+) FOUND$", "\n\n/s/0001.ATT: Late FOUND\n", 256, "Late"},
};

static void test_virus_name(void)
{
	for (size_t i = 0; i < sizeof name_cases / sizeof name_cases[0]; i++) {
		const struct name_case *c = &name_cases[i];
		regex_t rx;
		char name[256];
		int has_rx = 0;
		memset(name, 'x', sizeof name);
		if (c->regex) {
			if (regcomp(&rx, c->regex, REG_EXTENDED | REG_NEWLINE) != 0) {
				CHECK_ROW("virus_name", c->name, !"regex compiles");
				continue;
			}
			has_rx = 1;
		}
		scanner_virus_name(has_rx ? &rx : NULL, has_rx, c->out, name, c->len);
		int ok = strlen(name) < c->len && check_bytes_are(name, strlen(name), c->want);
		CHECK_ROW("virus_name", c->name, ok);
		if (has_rx)
			regfree(&rx);
	}
}

static void test_setup(void)
{
	static const struct {
		const char *name;
		enum scanner_type type;
		enum scanner_mode mode;
		const struct scanner_ops *want;
		int missing;
	} cases[] = {
	    {"per-attachment", SCANNER_EXEC, MODE_PER_ATTACHMENT, &scanner_ops_per_attachment, 1},
	    {"per-message", SCANNER_EXEC, MODE_PER_MESSAGE, &scanner_ops_per_message, 1},
	    {"clamd", SCANNER_CLAMD, MODE_CLAMD, &scanner_ops_clamd, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct conf_scanner sc;
		struct scanner s;
		memset(&sc, 0, sizeof sc);
		sc.name = "t";
		sc.type = cases[i].type;
		sc.mode = cases[i].mode;
		sc.virus_regex = ": (.+) FOUND$";
		scanner_setup(&s, &sc, "test.conf");
		CHECK_ROW("setup", cases[i].name,
		          s.ops == cases[i].want && s.has_rx &&
		              strcmp(s.ops->mode, cases[i].name) == 0 &&
		              s.ops->checks_missing == cases[i].missing && s.ops->scan &&
		              s.ops->check && s.ops->version);
		regfree(&s.rx);
	}
}

int main(void)
{
	test_exit_map();
	test_virus_name();
	test_setup();
	return failures ? 1 : 0;
}
