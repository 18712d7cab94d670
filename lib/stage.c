/*
 * stage - see stage.h.
 */
#include "stage.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "trace.h"
#include "user.h"
#include "util.h"
#include "version.h"
#include "watch.h"

static volatile sig_atomic_t stage_stop;
static volatile sig_atomic_t stage_paused;

static void stage_on_signal(int sig)
{
	if (sig == SIGTERM || sig == SIGINT)
		stage_stop = 1;
	else if (sig == SIGUSR1)
		stage_paused = 1;
	else if (sig == SIGUSR2)
		stage_paused = 0;
}

int stage_stopping(void)
{
	return stage_stop;
}

int stage_is_paused(void)
{
	return stage_paused;
}

static void stage_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = stage_on_signal;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: a stop request must interrupt the wait for inotify events. */
	sa.sa_flags = 0;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN); /* spoold re-reads the config and restarts us if needed */
}

/* A (nearly) full spool filesystem: claim nothing, log it once, look again every second.
 * Writing verdicts or reports into a full disk would only fail half-way; waiting costs
 * nothing and loses nothing. The splitter also keeps a larger reserve of its own. */
static int stage_space_low;

static int stage_space_ok(struct stage *st)
{
	uint64_t free_bytes = spool_space_free(&st->spool);
	if (free_bytes < SPOOL_RESERVE_BYTES / 4) {
		if (!stage_space_low)
			log_error(NULL,
			          "spool %s has %llu bytes free: claiming nothing until space "
			          "comes back",
			          st->spool.root, (unsigned long long)free_bytes);
		stage_space_low = 1;
		return 0;
	}
	if (stage_space_low)
		log_info(NULL, "spool %s has space again: resuming", st->spool.root);
	stage_space_low = 0;
	return 1;
}

int stage_scan(struct stage *st)
{
	char **names;
	size_t n;
	int did = 0;
	int fd = st->spool.fd[st->watch_dir];
	if (!stage_space_ok(st))
		return 0;
	if (spool_list(fd, st->watch_dir != SD_INBOUND, &names, &n) < 0) {
		log_warn(NULL, "cannot list %s/%s: %s", st->spool.root,
		         spool_dir_name(st->watch_dir), strerror(errno));
		return 0;
	}
	for (size_t i = 0; i < n && !stage_stop && !stage_paused; i++)
		if (st->handle(st, names[i]) > 0)
			did++;
	spool_names_free(names, n);
	if (st->flush)
		st->flush(st);
	return did;
}

/* The readiness descriptor spoold handed us in SPOOLD_READY_FD (s6's notification-fd
 * idea), or -1. Taken at start and made close-on-exec at once, so that scanner children
 * started during recovery (the canary) never inherit it. */
static int stage_ready_fd = -1;

void stage_ready_take(void)
{
	const char *s = getenv("SPOOLD_READY_FD");
	uint64_t fd;
	if (s == NULL || parse_u64(s, &fd) < 0 || fd < 3 || fd > 1024)
		return;
	unsetenv("SPOOLD_READY_FD");
	if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
		return; /* not open: not started by spoold after all */
	stage_ready_fd = (int)fd;
}

/* Start-up recovery is done: one line to spoold, then close. */
void stage_ready_notify(void)
{
	if (stage_ready_fd < 0)
		return;
	if (write_all(stage_ready_fd, "ready\n", 6) < 0)
		log_warn(NULL, "cannot signal readiness to spoold: %s", strerror(errno));
	close(stage_ready_fd);
	stage_ready_fd = -1;
}

static void stage_usage(const char *prog)
{
	die_perm(EXIT_USAGE, "usage: %s [-c CONFIG] [--once]", prog);
}

int stage_main(struct stage *st, int argc, char **argv)
{
	const char *conf_path = "/etc/spoold/spoold.conf";
	log_init(st->name);
	trace_set_prog(st->name);
	stage_ready_take();
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf_path = argv[++i];
		else if (strcmp(argv[i], "--once") == 0)
			st->once = 1;
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit(st->name);
		else
			stage_usage(st->name);
	}
	st->conf = conf_load(conf_path);
	user_root_check(st->conf, st->name);
	spool_open(&st->spool, st->conf->spool_dir, 1);
	stage_signals();

	char dir[4096];
	snprintf(dir, sizeof dir, "%s/%s", st->spool.root, spool_dir_name(st->watch_dir));
	/* Watch first, then scan: a name that arrives between the two is seen either way. */
	if (!st->once)
		watch_open(dir);
	spool_trash_empty(&st->spool);
	if (st->recover)
		st->recover(st);
	/* Started paused (spoold restarted us while the stage was paused): set before the
	 * first scan so that nothing is claimed. */
	const char *ps = getenv("SPOOLD_PAUSED");
	if (ps && strcmp(ps, "1") == 0)
		stage_paused = 1;
	log_info(NULL, "started, watching %s", dir);
	stage_ready_notify();

	/* Names whose entry was still locked when their event came (the previous stage
	 * finishing its move): looked at again shortly. Bounded; past the bound, rescan. */
	enum { PENDING_MAX = 256 };
	char *pending[PENDING_MAX];
	int pending_tries[PENDING_MAX];
	size_t n_pending = 0;
	int64_t pending_at = 0;
	int was_paused = 0;
	int rescan_ms = st->conf->rescan_interval * 1000;
	int64_t next_rescan = 0;
	int64_t next_tick = 0;
	int64_t next_metrics = 0;
	while (!stage_stop) {
		int64_t now = now_ms_monotonic();
		int wait = rescan_ms;
		if (!stage_paused && now >= next_rescan) {
			stage_scan(st);
			next_rescan = now_ms_monotonic() + rescan_ms;
		}
		if (st->tick && !stage_paused && now >= next_tick) {
			int w = st->tick(st);
			next_tick = now_ms_monotonic() + (st->tick_ms > 0 ? st->tick_ms : 1000);
			if (w >= 0 && w < wait)
				wait = w;
		}
		if (st->once)
			break;
		if (was_paused && !stage_paused)
			next_rescan = 0; /* resumed: look at everything that came meanwhile */
		was_paused = stage_paused;
		if (n_pending && !stage_paused && now_ms_monotonic() >= pending_at) {
			size_t keep = 0;
			/* Held for longer than ~200 ms means another instance of this stage is
			 * working on it: that one moves it on; the rescan is the safety net. */
			for (size_t i = 0; i < n_pending; i++) {
				log_debug(NULL, "retrying %s", pending[i]);
				if (st->handle(st, pending[i]) < 0 && ++pending_tries[i] < 40) {
					pending_tries[keep] = pending_tries[i];
					pending[keep++] = pending[i];
				} else {
					free(pending[i]);
				}
			}
			n_pending = keep;
			pending_at = now_ms_monotonic() + 5;
		}
		if (n_pending && wait > 5)
			wait = 5;
		if (stage_space_low) {
			if (stage_space_ok(st))
				next_rescan = 0; /* space is back: look at everything */
			else if (wait > 1000)
				wait = 1000;
		}
		if (st->tick) {
			int64_t until_tick = next_tick - now_ms_monotonic();
			if (until_tick < wait)
				wait = until_tick < 0 ? 0 : (int)until_tick;
		}
		/* Commit whatever the handlers prepared (events, retries, ticks) before waiting:
		 * nothing prepared may wait for the next event, nor for the metrics below. */
		if (st->flush)
			st->flush(st);
		/* Counters reach run/stats/ within a second, but are written at most once a
		 * second: a file per message would be a file creation on every message's path. */
		now = now_ms_monotonic();
		if (now >= next_metrics) {
			metrics_flush(&st->spool, st->name);
			next_metrics = now + 1000;
		}
		if (wait > next_metrics - now)
			wait = next_metrics - now < 0 ? 0 : (int)(next_metrics - now);
		char name[1024];
		switch (watch_next(wait, name, sizeof name)) {
		case WATCH_NAME:
			if (stage_paused || name[0] == '.')
				break;
			if (!stage_space_ok(st)) {
				next_rescan = now_ms_monotonic() + 1000;
				break;
			}
			log_debug(NULL, "event for %s", name);
			if (st->handle(st, name) < 0) {
				log_debug(NULL, "%s is busy; looking again shortly", name);
				if (n_pending < PENDING_MAX) {
					pending_tries[n_pending] = 0;
					pending[n_pending++] = xstrdup(name);
					pending_at = now_ms_monotonic() + 2;
				} else {
					next_rescan = 0;
				}
			}
			break;
		case WATCH_RESCAN:
			next_rescan = 0;
			break;
		case WATCH_TIMEOUT:
			/* Idle: delete what finished work left in trash/, off the message path. */
			if (n_pending == 0)
				spool_trash_empty(&st->spool);
			break;
		case WATCH_INTR:
			break;
		}
	}
	for (size_t i = 0; i < n_pending; i++)
		free(pending[i]);
	if (st->flush)
		st->flush(st);
	metrics_flush(&st->spool, st->name);
	spool_trash_empty(&st->spool); /* what retired entries left, before we go */
	log_info(NULL, "stopping");
	spool_close(&st->spool);
	conf_free(st->conf);
	return 0;
}
