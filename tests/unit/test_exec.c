// links:
/*
 * Unit tests for exec_run and slot_acquire_timed (issue 14, L2 and L10, item 2): a failed
 * waitpid is no status, output cut at the bound or held open after the child exited is
 * truncated and the child's exit does not wait for the deadline, and a slot nobody frees
 * ends in ETIMEDOUT.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "exec.h"
#include "slot.h"
#include "spool.h"
#include "util.h"
#include "check.h"

static int test_exec_sh(const char *script, size_t output_max, int timeout_ms,
                        struct exec_result *res)
{
	char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
	struct exec_opts o;
	exec_opts_init(&o);
	o.output_max = output_max;
	o.timeout_ms = timeout_ms;
	return exec_run(argv, &o, res);
}

int main(void)
{
	struct exec_result res;

	/* The ordinary case: a status, all of the output. */
	CHECK("exec_runs", test_exec_sh("echo hello; exit 3", 1024, 10000, &res) == 0);
	CHECK("exec_status", res.exited && res.exit_code == 3 && !res.wait_failed &&
	                         !res.output_truncated && res.output.len == 6);
	exec_result_free(&res);

	/* Output over the bound: truncated, whatever the exit code. */
	CHECK("exec_over_bound_runs",
	      test_exec_sh("i=0; while [ $i -lt 200 ]; do echo 0123456789; i=$((i+1)); done", 100,
	                   10000, &res) == 0);
	CHECK("exec_over_bound_truncated",
	      res.exited && res.exit_code == 0 && res.output_truncated && res.output.len == 100);
	exec_result_free(&res);

	/* A grandchild that leaves the group and keeps the pipe: the child's exit ends the
	 * read within the drain time, not at the 20 s deadline, and the capture is marked
	 * incomplete. */
	int64_t t0 = now_ms_monotonic();
	CHECK("exec_held_open_runs",
	      test_exec_sh("echo first; setsid sleep 5 & exit 0", 1024, 20000, &res) == 0);
	long took = (long)(now_ms_monotonic() - t0);
	CHECK("exec_held_open_returns_early", took < 4000);
	CHECK("exec_held_open_truncated",
	      res.exited && res.exit_code == 0 && !res.timed_out && res.output_truncated);
	exec_result_free(&res);

	/* The same with a grandchild that never stops writing: still bounded by the drain
	 * time (it dies of SIGPIPE once we close the pipe). */
	t0 = now_ms_monotonic();
	CHECK("exec_endless_writer_runs",
	      test_exec_sh("setsid yes & exit 0", 1024, 20000, &res) == 0);
	took = (long)(now_ms_monotonic() - t0);
	CHECK("exec_endless_writer_returns_early", took < 4000);
	CHECK("exec_endless_writer_truncated",
	      res.exited && !res.timed_out && res.output_truncated);
	exec_result_free(&res);

	/* SIGCHLD ignored: the kernel reaps the child, waitpid fails; no exit code, never 0. */
	signal(SIGCHLD, SIG_IGN);
	CHECK("exec_sigign_runs", test_exec_sh("exit 0", 1024, 10000, &res) == 0);
	char d[64];
	exec_result_describe(&res, d, sizeof d);
	CHECK("exec_sigign_wait_failed",
	      res.wait_failed && !res.exited && res.exit_code == 0 && strncmp(d, "wait:", 5) == 0);
	exec_result_free(&res);
	CHECK("exec_sigchld_default", exec_sigchld_default() == 0);
	CHECK("exec_after_reset_runs", test_exec_sh("exit 0", 1024, 10000, &res) == 0);
	CHECK("exec_after_reset_status", res.exited && !res.wait_failed);
	exec_result_free(&res);

	/* Slots: all held by someone else, the wait ends at the timeout with ETIMEDOUT. */
	char root[] = "/tmp/exec-unit-XXXXXX";
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	struct spool sp;
	spool_open(&sp, root, 1);
	int s0 = slot_acquire_timed(&sp, "unit", 1, 1000);
	CHECK("slot_free_taken", s0 >= 0);
	CHECK("slot_cloexec", s0 >= 0 && (fcntl(s0, F_GETFD) & FD_CLOEXEC));
	/* Another open file description of the same slot: flock sees a second holder. */
	t0 = now_ms_monotonic();
	int s1 = slot_acquire_timed(&sp, "unit", 1, 600);
	int e = errno;
	took = (long)(now_ms_monotonic() - t0);
	CHECK("slot_times_out", s1 < 0 && e == ETIMEDOUT && took >= 550 && took < 3000);
	slot_release(s0);
	s1 = slot_acquire_timed(&sp, "unit", 1, 600);
	CHECK("slot_free_again", s1 >= 0);
	slot_release(s1);

	spool_close(&sp);
	if (remove_tree_at(AT_FDCWD, root) < 0)
		fprintf(stderr, "cannot remove %s: %s\n", root, strerror(errno));
	return failures ? 1 : 0;
}
