// links:
/*
 * test_panic - the enum-to-name tables panic on a value outside them (log_panic, abort)
 * instead of reading past their end: an internal inconsistency must stop the program
 * loudly, never put a stray pointer into a manifest, a verdicts file or a log line.
 *
 * Each case runs in a child (fork) with its standard error on a pipe: it must die of
 * SIGABRT, having logged the function's name; a valid value must give the name.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "manifest.h"
#include "util.h"
#include "verdict.h"

struct panic_case {
	const char *name;
	int value;
	const char *(*lookup)(int value);
	const char *want; /* the name for a valid value; NULL: must panic */
	const char *said; /* in the panic's log line */
};

static const char *panic_verdict(int v)
{
	return verdict_name((enum verdict)v);
}

static const char *panic_found(int v)
{
	return manifest_found_name((enum part_found)v);
}

static const struct panic_case cases[] = {
    {"verdict_clean", V_CLEAN, panic_verdict, "clean", NULL},
    {"verdict_unscannable", V_UNSCANNABLE, panic_verdict, "unscannable", NULL},
    {"verdict_past_end", V_UNSCANNABLE + 1, panic_verdict, NULL, "verdict_name: bad verdict"},
    {"verdict_negative", -1, panic_verdict, NULL, "verdict_name: bad verdict"},
    {"verdict_huge", 1 << 30, panic_verdict, NULL, "verdict_name: bad verdict"},
    {"found_leaf", FOUND_LEAF, panic_found, "leaf", NULL},
    {"found_raw", FOUND_RAW, panic_found, "raw", NULL},
    {"found_past_end", FOUND_RAW + 1, panic_found, NULL, "manifest_found_name: bad part kind"},
    {"found_negative", -1, panic_found, NULL, "manifest_found_name: bad part kind"},
};

/* Run c in a child; *sig gets the signal it died of (0 if it exited) and out what it
 * wrote to standard error and standard output. */
static int panic_run(const struct panic_case *c, int *sig, char *out, size_t outlen)
{
	int p[2];
	if (pipe(p) < 0)
		return -1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		close(p[0]);
		const char *n = c->lookup(c->value);
		printf("name=%s\n", n);
		fflush(stdout);
		_exit(0);
	}
	close(p[1]);
	size_t len = 0;
	ssize_t r;
	while (len + 1 < outlen && (r = read(p[0], out + len, outlen - 1 - len)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		len += (size_t)r;
	}
	out[len] = '\0';
	close(p[0]);
	int status;
	if (waitpid(pid, &status, 0) < 0)
		return -1;
	*sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	return 0;
}

int main(void)
{
	log_init("unit_panic");
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const struct panic_case *c = &cases[i];
		char out[4096], want[128];
		int sig = -1;
		if (panic_run(c, &sig, out, sizeof out) < 0) {
			printf("  cannot run the child: %s\n", strerror(errno));
			CHECK_ROW("panic", c->name, 0);
			continue;
		}
		if (c->want) {
			snprintf(want, sizeof want, "name=%s\n", c->want);
			CHECK_ROW("name", c->name, sig == 0 && strcmp(out, want) == 0);
		} else {
			if (sig != SIGABRT || strstr(out, c->said) == NULL)
				printf("  signal %d, output \"%s\"\n", sig, out);
			CHECK_ROW("panic", c->name, sig == SIGABRT && strstr(out, c->said) != NULL);
		}
	}
	return failures ? 1 : 0;
}
