/*
 * exec - run one child program safely: execve with no shell, a fresh process group,
 * a scrubbed environment, stdin from /dev/null, stdout+stderr captured together up to a
 * bound, rlimits, a deadline, and no inherited descriptors except keep_fd.
 *
 * On timeout the whole process group gets SIGTERM, then SIGKILL after grace_ms, and the
 * child is always reaped. The child also gets PR_SET_PDEATHSIG(SIGKILL), so it does not
 * outlive a killed runner.
 *
 * DIAGNOSTICS
 *   exec_run returns 0 when the child ran (whatever its status) and fills res; it
 *   returns -1 only when fork or pipe failed. A failed execve shows up as
 *   res->exec_failed with res->exec_errno.
 */
#ifndef SPOOLD_EXEC_H
#define SPOOLD_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct exec_opts {
	const char *cwd;     /* NULL: inherit */
	int timeout_ms;      /* <= 0: no deadline */
	int grace_ms;        /* between SIGTERM and SIGKILL; default 2000 when 0 */
	size_t output_max;   /* bytes of output kept; the rest is read and dropped */
	uint64_t rlimit_as;  /* 0: unchanged */
	uint64_t rlimit_cpu; /* seconds, 0: unchanged */
	uint64_t rlimit_nofile;
	int keep_fd; /* a descriptor the child inherits on purpose, or -1 */
};

struct exec_result {
	int exited; /* 1 if it exited normally */
	int exit_code;
	int signaled; /* 1 if killed by a signal */
	int signo;
	int timed_out;   /* 1 if we killed it at the deadline */
	int exec_failed; /* 1 if execve failed (exit_code then 127) */
	int exec_errno;
	long ms; /* wall time */
	struct buf output;
	int output_truncated;
};

void exec_opts_init(struct exec_opts *o);
int exec_run(char *const argv[], const struct exec_opts *o, struct exec_result *res);
void exec_result_free(struct exec_result *res);
/* "exit:0", "sig:11", "timeout", "exec:ENOENT" */
void exec_result_describe(const struct exec_result *res, char *out, size_t len);

#endif
