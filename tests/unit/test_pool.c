// links:
/*
 * test_pool - unit test of the shared pool state (lib/pool.c): placement per balance,
 * the back-off that doubles from down_min to down_max, probes once it is over, in-flight
 * counts that die with their process, the canary mark, the trust rule (no tcp address
 * after a unix one), a file for other addresses started afresh, and the recovery stamp.
 *
 * Prints one line per check, "PASS name" or "FAIL name: why", and exits 1 if any failed.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool.h"
#include "check.h"

/* Pretend addrs[i]'s back-off is over (instead of sleeping through it). */
static void pool_test_expire(struct pool *p, size_t i)
{
	struct pool_file f;
	if (pool_snapshot(p, &f) == 0) {
		f.a[i].down_until_ms = 0;
		if (pwrite(p->fd, &f, sizeof f, 0) != (ssize_t)sizeof f)
			printf("FAIL pwrite\n");
	}
}

static char *addrs3[] = {"unix:/a", "unix:/b", "unix:/c", NULL};

int main(void)
{
	char dir[] = "/tmp/spoold-test-pool-XXXXXX";
	struct pool p;
	struct pool_file f;
	size_t order[POOL_MAX_ADDRS];
	int due[POOL_MAX_ADDRS];
	if (mkdtemp(dir) == NULL)
		return 2;
	int rundir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rundir < 0 || pool_open(&p, rundir, dir, "s", addrs3, 1000, 4000) < 0)
		return 2;

	/* failover: the configured order, every time. */
	size_t k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("failover_order", k == 3 && order[0] == 0 && order[1] == 1 && order[2] == 2);
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("failover_again_first", k == 3 && order[0] == 0);

	/* round-robin: the first address turns by one per message. */
	size_t firsts[3];
	for (int i = 0; i < 3; i++) {
		pool_place(&p, POOL_ROUND_ROBIN, order, due, POOL_MAX_ADDRS);
		firsts[i] = order[0];
	}
	CHECK("round_robin_turns",
	      firsts[0] != firsts[1] && firsts[1] != firsts[2] && firsts[0] != firsts[2]);

	/* least-busy: an address with a request in flight comes last. */
	pool_begin(&p, 0);
	pool_begin(&p, 0);
	pool_begin(&p, 1);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("least_busy_order", k == 3 && order[0] == 2 && order[1] == 1 && order[2] == 0);
	pool_end(&p, 0);
	pool_end(&p, 0);
	pool_end(&p, 1);
	CHECK("inflight_back_to_zero", pool_snapshot(&p, &f) == 0 &&
	                                   pool_addr_inflight(&f.a[0]) == 0 &&
	                                   pool_addr_inflight(&f.a[1]) == 0);

	/* In flight of a process that died (kill -9) does not count. */
	pid_t child = fork();
	if (child == 0) {
		pool_begin(&p, 2);
		pool_begin(&p, 2);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	CHECK("dead_pid_not_busy", pool_snapshot(&p, &f) == 0 && pool_addr_inflight(&f.a[2]) == 0);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("dead_pid_entry_dropped", pool_snapshot(&p, &f) == 0 && f.a[2].inflight[0].pid == 0);

	/* Down: out of placement for the back-off, which doubles up to down_max. */
	pool_fail(&p, 1, "connect: Connection refused");
	pool_snapshot(&p, &f);
	CHECK("down_backoff_min", f.a[1].down && f.a[1].backoff_ms == 1000 && f.a[1].errors == 1);
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("down_not_placed", k == 2 && order[0] == 0 && order[1] == 2);
	pool_fail(&p, 1, "x");
	pool_fail(&p, 1, "x");
	pool_fail(&p, 1, "x");
	pool_snapshot(&p, &f);
	CHECK("backoff_doubles_capped", f.a[1].backoff_ms == 4000 && f.a[1].errors == 4);
	CHECK("reason_kept", strcmp(f.a[1].reason, "x") == 0);
	/* Once the back-off is over: placed again, but as due for a probe. */
	pool_test_expire(&p, 1);
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("due_after_backoff", k == 3 && order[1] == 1 && due[1] == 1 && due[0] == 0);
	pool_probe_result(&p, 1, 0, NULL, "probe: no PONG", 1);
	pool_snapshot(&p, &f);
	CHECK("probe_fail_stays_down", f.a[1].down && f.a[1].backoff_ms == 4000);
	pool_test_expire(&p, 1);
	pool_probe_result(&p, 1, 1, "ClamAV 1.4.6/1/x", NULL, 1);
	pool_snapshot(&p, &f);
	CHECK("probe_ok_up", !f.a[1].down && f.a[1].backoff_ms == 0 && !f.a[1].canary_bad &&
	                         strcmp(f.a[1].version, "ClamAV 1.4.6/1/x") == 0);
	/* Back with another version: no mail until its canary passes. */
	pool_fail(&p, 1, "x");
	pool_test_expire(&p, 1);
	pool_probe_result(&p, 1, 1, "ClamAV 1.4.6/2/y", NULL, 1);
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("new_version_waits_for_canary", k == 2 && order[0] == 0 && order[1] == 2);
	pool_canary(&p, 1, 1, "ClamAV 1.4.6/2/y", NULL);
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("canary_pass_readmits", k == 3 && order[1] == 1 && !due[1]);
	pool_canary(&p, 0, 0, NULL, "canary-eicar.com: want infected, got clean");
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("canary_fail_excluded", k == 2 && order[0] != 0 && order[1] != 0);
	pool_snapshot(&p, &f);
	CHECK("canary_reason", strncmp(f.a[0].reason, "canary: ", 8) == 0);
	/* Every address down: nothing placed; the fallback tries the down ones (today's
	 * rule) but never one that failed its canary. */
	pool_fail(&p, 1, "x");
	pool_fail(&p, 2, "y");
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("all_down_nothing_placed", k == 0);
	k = pool_fallback(&p, order, POOL_MAX_ADDRS, 0);
	CHECK("fallback_skips_canary_bad", k == 2 && order[0] == 1 && order[1] == 2);
	k = pool_fallback(&p, order, POOL_MAX_ADDRS, 1);
	CHECK("fallback_with_bad", k == 3 && order[0] == 0);
	pool_close(&p);

	/* The trust rule: a tcp address after a unix one is never placed. */
	char *mixed[] = {"unix:/a", "tcp:127.0.0.1:1", NULL};
	if (pool_open(&p, rundir, dir, "m", mixed, 1000, 4000) < 0)
		return 2;
	k = pool_place(&p, POOL_ROUND_ROBIN, order, due, POOL_MAX_ADDRS);
	CHECK("no_tcp_after_unix", k == 1 && order[0] == 0);
	pool_close(&p);

	/* least-busy weighs a clearly slow address (issue 17, the slow-clamd load test): a
	 * clamd answering 50 ms per part while the others take 2 ms gets mail only when the
	 * others have that many requests queued, not whenever it is the idlest. */
	if (pool_open(&p, rundir, dir, "w", addrs3, 1000, 4000) < 0)
		return 2;
	pool_begin(&p, 0);
	pool_end_timed(&p, 0, 50000 * 3, 3); /* 50 ms a part */
	pool_begin(&p, 1);
	pool_end_timed(&p, 1, 2000 * 3, 3);
	pool_begin(&p, 2);
	pool_end_timed(&p, 2, 3000 * 2, 2); /* 1.5 x the fastest: noise, weight 1 */
	pool_snapshot(&p, &f);
	CHECK("part_time_recorded", f.a[0].part_us == 50000 && f.a[1].part_us == 2000 &&
	                                f.a[2].part_us == 3000 && pool_addr_inflight(&f.a[0]) == 0);
	pool_begin(&p, 1);
	pool_begin(&p, 2);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("slow_last_though_idle", k == 3 && order[2] == 0);
	/* Between equals the weight is 1: the idle one first, as before. */
	pool_end(&p, 1);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("near_equal_by_load", k == 3 && order[0] == 1 && order[1] == 2 && order[2] == 0);
	/* Four times slower but only 6 ms: scheduling noise, not a slow clamd. Address 2
	 * (1 in flight) goes before address 1 (2 in flight); weighed 4, it would not. */
	for (int i = 0; i < 5; i++) {
		pool_begin(&p, 2);
		pool_end_timed(&p, 2, 10000, 1);
	}
	pool_begin(&p, 1);
	pool_begin(&p, 1);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("few_ms_slower_not_weighed", pool_snapshot(&p, &f) == 0 && f.a[2].part_us > 8000 &&
	                                       pool_addr_inflight(&f.a[2]) == 1 && k == 3 &&
	                                       order[0] == 2 && order[1] == 1);
	pool_end(&p, 1);
	pool_end(&p, 1);
	pool_end(&p, 2);
	/* Queued deep enough elsewhere, the slow one takes mail. */
	for (int i = 0; i < 30; i++) {
		pool_begin(&p, 1);
		pool_begin(&p, 2);
	}
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("slow_when_others_queued", k == 3 && order[0] == 0);
	/* A time older than POOL_LAT_STALE_MS no longer weighs: the slow one is tried again
	 * and shows whether it recovered. */
	for (int i = 0; i < 30; i++) {
		pool_end(&p, 1);
		pool_end(&p, 2);
	}
	pool_snapshot(&p, &f);
	f.a[0].part_at_ms -= POOL_LAT_STALE_MS + 1000;
	if (pwrite(p.fd, &f, sizeof f, 0) != (ssize_t)sizeof f)
		printf("FAIL pwrite\n");
	pool_begin(&p, 1);
	pool_begin(&p, 2);
	k = pool_place(&p, POOL_LEAST_BUSY, order, due, POOL_MAX_ADDRS);
	CHECK("stale_time_forgotten", k == 3 && order[0] == 0);
	pool_end(&p, 1);
	pool_end(&p, 2);
	pool_begin(&p, 0);
	pool_end_timed(&p, 0, 2000, 1);
	pool_snapshot(&p, &f);
	CHECK("stale_time_starts_over", f.a[0].part_us == 2000);
	pool_close(&p);

	/* Another address list under the same name: the old state is not taken over. */
	char *other[] = {"unix:/x", "unix:/b", NULL};
	if (pool_open(&p, rundir, dir, "s", other, 1000, 4000) < 0)
		return 2;
	k = pool_place(&p, POOL_FAILOVER, order, due, POOL_MAX_ADDRS);
	CHECK("foreign_file_reset",
	      k == 2 && pool_snapshot(&p, &f) == 0 && f.a[0].canary_bad == 0 && f.a[1].errors == 0);
	CHECK("pool_read",
	      pool_read(rundir, "s", &f) == 0 && f.n == 2 && strcmp(f.a[0].addr, "unix:/x") == 0);
	pool_close(&p);

	/* The recovery stamp. */
	CHECK("recovered_none", pool_recovered_at(rundir, "s") == 0);
	pool_recovered_note(rundir, dir, "s");
	CHECK("recovered_at", pool_recovered_at(rundir, "s") > 1700000000);

	const char *made[] = {"pool.s", "pool.m", "pool.w", "recovered.s"};
	for (size_t i = 0; i < sizeof made / sizeof made[0]; i++)
		unlinkat(rundir, made[i], 0);
	close(rundir);
	rmdir(dir);
	return failures ? 1 : 0;
}
