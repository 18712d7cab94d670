/*
 * exec - run one child program safely: execve with no shell, a fresh process group,
 * a scrubbed environment, stdin from /dev/null, stdout+stderr captured together up to a
 * bound, rlimits, a deadline, and no inherited descriptors except keep_fd.
 *
 * On timeout the whole process group gets SIGTERM, then SIGKILL after grace_ms, and the
 * child is always reaped. The child also gets PR_SET_PDEATHSIG(SIGKILL), so it does not
 * outlive a killed runner. Once the child has exited, its output is read for at most
 * EXEC_DRAIN_MS more: a descendant that left the group and keeps the pipe open cannot
 * hold us, and the capture is then marked truncated (it may not be the whole answer).
 *
 * A caller that runs children calls exec_sigchld_default() at start: an inherited
 * SIGCHLD SIG_IGN makes the kernel reap children itself, and waitpid then fails.
 *
 * DIAGNOSTICS
 *   exec_run returns 0 when the child ran (whatever its status) and fills res; it
 *   returns -1 only when fork or pipe failed. A failed execve shows up as
 *   res->exec_failed with res->exec_errno. A failed waitpid shows up as res->wait_failed
 *   with res->wait_errno and exited = 0: there is no exit code then, never a 0. Callers
 *   treat output_truncated as "the output is not the whole answer" (an error, never
 *   clean).
 *
 * THE BROKER PATH (lib/broker.h): with broker_fd >= 0, exec_run does not fork the
 * scanner itself but asks the scanner broker (running as scanner_user) to, passing files
 * as descriptors; argv must then name file i as broker_file_arg(i) ("/dev/fd/N"). The
 * result is the same struct. It returns -1 also when the broker cannot be asked at all.
 * The broker's handler runs the scanner here with place_fds (dup'ed to BROKER_FD_BASE +
 * i, -1 left closed; each must be above BROKER_FD_BASE + n_place, or the run fails with
 * exec_errno EBADF), tmpdir (TMPDIR in the child's environment) and cancel_fd (when it
 * hangs up or becomes readable, the runner has gone: the group is killed at once).
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
	/* The broker path (runner side): run through the broker at broker_fd (-1: fork
	 * here), passing files[0..n_files) as descriptors. */
	int broker_fd;
	const char *const *files;
	size_t n_files;
	/* The broker's handler side (see above). */
	const int *place_fds;
	size_t n_place;
	const char *tmpdir; /* NULL: no TMPDIR */
	int cancel_fd;      /* -1: none */
};

struct exec_result {
	int exited; /* 1 if it exited normally */
	int exit_code;
	int signaled; /* 1 if killed by a signal */
	int signo;
	int timed_out;   /* 1 if we killed it at the deadline */
	int exec_failed; /* 1 if execve failed (exit_code then 127) */
	int exec_errno;
	long ms;         /* wall time */
	int wait_failed; /* 1 if waitpid failed: no status at all */
	int wait_errno;
	int not_started; /* 1 if the caller never ran it (set by callers, e.g. no slot) */
	struct buf output;
	/* 1 if output is not all the child wrote: over output_max, or the pipe was still
	 * open EXEC_DRAIN_MS after the child exited */
	int output_truncated;
};

/* SIGCHLD back to SIG_DFL; -1 with errno if sigaction fails. */
int exec_sigchld_default(void);
void exec_opts_init(struct exec_opts *o);
int exec_run(char *const argv[], const struct exec_opts *o, struct exec_result *res);
void exec_result_free(struct exec_result *res);
/* "0", "sig:11", "timeout", "exec:ENOENT", "wait:ECHILD", "not-started" */
void exec_result_describe(const struct exec_result *res, char *out, size_t len);

#endif
