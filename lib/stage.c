/*
 * stage - see stage.h.
 */
#include "stage.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "trace.h"
#include "user.h"
#include "util.h"
#include "version.h"
#include "watch.h"

static int stage_stop;
static int stage_paused;
static int stage_sigfd = -1;

/* Read what the signalfd holds. The signals are blocked, so they change nothing until they
 * are read here: the loop reads them when the descriptor is readable, and long work reads
 * them through stage_stopping() between units. */
static void stage_signals_read(void)
{
	struct signalfd_siginfo si;
	if (stage_sigfd < 0)
		return;
	for (;;) {
		ssize_t n = read(stage_sigfd, &si, sizeof si);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n != (ssize_t)sizeof si)
			log_panic("signalfd read: %s", n < 0 ? strerror(errno) : "short read");
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			stage_stop = 1;
		else if (si.ssi_signo == SIGUSR1)
			stage_paused = 1;
		else if (si.ssi_signo == SIGUSR2)
			stage_paused = 0;
	}
}

int stage_stopping(void)
{
	stage_signals_read();
	return stage_stop;
}

int stage_is_paused(void)
{
	stage_signals_read();
	return stage_paused;
}

/* Block the control signals and take them through a signalfd. Children started by
 * lib/exec.c unblock every signal before execve; the watcher thread blocks all of them. */
static void stage_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		die_temp(NULL, "sigprocmask: %s", strerror(errno));
	stage_sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (stage_sigfd < 0)
		die_temp(NULL, "signalfd: %s", strerror(errno));
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN); /* spoold re-reads the config and restarts us if needed */
}

/* A (nearly) full spool filesystem: claim nothing, log it once, look again every second.
 * Writing verdicts or reports into a full disk would only fail half-way; waiting costs
 * nothing and loses nothing. The splitter also keeps a larger reserve of its own. */
static int stage_space_low;

static int stage_space_ok(struct stage *st)
{
	if (st->work_when_full)
		return 1;
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

static int stage_dir_fd(const struct stage *st)
{
	return st->dir_name ? st->dir_fd : st->spool.fd[st->watch_dir];
}

static const char *stage_dir_name(const struct stage *st)
{
	return st->dir_name ? st->dir_name : spool_dir_name(st->watch_dir);
}

int stage_scan(struct stage *st)
{
	char **names;
	size_t n;
	int did = 0;
	if (!stage_space_ok(st))
		return 0;
	if (spool_list(stage_dir_fd(st), st->dir_name || st->watch_dir != SD_INBOUND, &names, &n) <
	    0) {
		log_warn(NULL, "cannot list %s/%s: %s", st->spool.root, stage_dir_name(st),
		         strerror(errno));
		return 0;
	}
	for (size_t i = 0; i < n && !stage_stopping() && !stage_is_paused(); i++)
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

/* Names to handle again at a time: entries that were busy (locked: the previous stage
 * finishing its move, retried every few ms, up to STAGE_BUSY_TRIES times) and names a
 * handler asked to look at later (stage_look_again; tries < 0). Bounded: past the bound a
 * rescan stands in. */
enum { STAGE_LATER_MAX = 256, STAGE_BUSY_TRIES = 40 };

struct stage_later {
	char *name;
	int64_t at;
	int tries;
};

static struct {
	struct stage_later v[STAGE_LATER_MAX];
	size_t n;
	int64_t next_rescan;
} stage_lp;

static void stage_later_add(const char *name, int64_t at, int tries)
{
	for (size_t i = 0; i < stage_lp.n; i++)
		if (strcmp(stage_lp.v[i].name, name) == 0) {
			if (at < stage_lp.v[i].at)
				stage_lp.v[i].at = at;
			if (tries >= 0)
				stage_lp.v[i].tries = tries;
			return;
		}
	if (stage_lp.n == STAGE_LATER_MAX) {
		if (at < stage_lp.next_rescan)
			stage_lp.next_rescan = at;
		return;
	}
	stage_lp.v[stage_lp.n++] = (struct stage_later){xstrdup(name), at, tries};
}

void stage_look_again(struct stage *st, const char *name, int64_t delay_ms)
{
	(void)st;
	if (delay_ms < 0)
		delay_ms = 0;
	stage_later_add(name, now_ms_monotonic() + delay_ms, -1);
}

/* Handle every name whose time has come. Taken off the list first: a handler may put its
 * name back (stage_look_again). */
static void stage_later_run(struct stage *st)
{
	struct stage_later due[STAGE_LATER_MAX];
	size_t n_due = 0;
	int64_t now = now_ms_monotonic();
	for (size_t i = 0; i < stage_lp.n;) {
		if (stage_lp.v[i].at <= now) {
			due[n_due++] = stage_lp.v[i];
			stage_lp.v[i] = stage_lp.v[--stage_lp.n];
		} else {
			i++;
		}
	}
	for (size_t i = 0; i < n_due; i++) {
		/* Held for longer than ~200 ms means another instance of this stage is working
		 * on it: that one moves it on; the rescan is the safety net. */
		if (!stage_stopping() && !stage_is_paused()) {
			log_debug(NULL, "looking again at %s", due[i].name);
			int tries = due[i].tries < 0 ? 0 : due[i].tries + 1;
			if (st->handle(st, due[i].name) < 0 && tries < STAGE_BUSY_TRIES)
				stage_later_add(due[i].name, now_ms_monotonic() + 5, tries);
		} else {
			/* Paused or stopping: the rescan after the resume looks at it. */
			stage_later_add(due[i].name, due[i].at, due[i].tries);
		}
		free(due[i].name);
	}
}

static int64_t stage_later_first(void)
{
	int64_t first = INT64_MAX;
	for (size_t i = 0; i < stage_lp.n; i++)
		if (stage_lp.v[i].at < first)
			first = stage_lp.v[i].at;
	return first;
}

/* --once: a name that asked to be looked at again within STAGE_ONCE_WAIT_MS (a file
 * resting for its quiet time, a busy entry) is handled before the run ends, so that a
 * batch run takes it too; anything later (an outbox entry's retry) is left to the next
 * run. */
enum { STAGE_ONCE_WAIT_MS = 5000 };

static void stage_once_later(struct stage *st)
{
	int64_t limit = now_ms_monotonic() + STAGE_ONCE_WAIT_MS, first;
	while (!stage_stopping() && (first = stage_later_first()) <= limit) {
		int64_t wait = first - now_ms_monotonic();
		if (wait > 0) {
			struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000};
			nanosleep(&ts, NULL);
		}
		stage_later_run(st);
		if (st->flush)
			st->flush(st);
	}
}

/* One name the watcher reported. */
static void stage_event(struct stage *st, const char *name)
{
	if (st->rescan_name && strcmp(name, st->rescan_name) == 0) {
		stage_lp.next_rescan = 0;
		return;
	}
	if (stage_is_paused() || name[0] == '.')
		return;
	if (!stage_space_ok(st)) {
		stage_lp.next_rescan = now_ms_monotonic() + 1000;
		return;
	}
	log_debug(NULL, "event for %s", name);
	if (st->handle(st, name) < 0) {
		log_debug(NULL, "%s is busy; looking again shortly", name);
		stage_later_add(name, now_ms_monotonic() + 2, 0);
	}
}

/* Wait until the timer reaches due (monotonic ms), a signal comes or the watcher has
 * names. Returns 1 when it woke for an event or a signal, 0 for the timer alone. */
static int stage_wait(int tfd, int wfd, int64_t due)
{
	struct pollfd p[3] = {{stage_sigfd, POLLIN, 0}, {tfd, POLLIN, 0}, {wfd, POLLIN, 0}};
	struct itimerspec its;
	int timeout = -1;
	memset(&its, 0, sizeof its);
	if (due <= now_ms_monotonic()) {
		timeout = 0;
	} else {
		its.it_value.tv_sec = due / 1000;
		its.it_value.tv_nsec = (due % 1000) * 1000000;
		/* An absolute time on CLOCK_MONOTONIC, the clock now_ms_monotonic reads. */
		if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
			log_panic("timerfd_settime: %s", strerror(errno));
	}
	int r = poll(p, wfd >= 0 ? 3 : 2, timeout);
	if (r < 0 && errno != EINTR)
		die_temp(NULL, "poll: %s", strerror(errno));
	uint64_t expirations;
	if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
		log_panic("timerfd read: %s", strerror(errno));
	return r > 0 && ((p[0].revents | p[2].revents) & (POLLIN | POLLERR | POLLHUP));
}

static void stage_usage(const struct stage *st)
{
	die_perm(EXIT_USAGE, "usage: %s [-c CONFIG]%s [--once]", st->name,
	         st->needs_instance ? " -n NAME" : "");
}

static void stage_options(struct stage *st, int argc, char **argv)
{
	st->conf_path = "/etc/spoold/spoold.conf";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			st->conf_path = argv[++i];
		else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc && st->needs_instance)
			st->instance = argv[++i];
		else if (strcmp(argv[i], "--once") == 0)
			st->once = 1;
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit(st->name);
		else
			stage_usage(st);
	}
	if (st->needs_instance && st->instance == NULL)
		stage_usage(st);
}

/* Everything before the loop: config, spool, init hook, signals, watch, recovery. Returns
 * the watcher's eventfd, or -1 with --once. */
static int stage_start(struct stage *st)
{
	st->conf = conf_load(st->conf_path);
	user_root_check(st->conf, st->name);
	spool_open(&st->spool, st->conf->spool_dir, 1);
	/* Back-off jitter (lib/outbox.c, router/hold.c) must differ between processes. */
	srand((unsigned)(getpid() ^ time(NULL)));
	if (st->init)
		st->init(st);
	stage_signals();
	char dir[4096];
	if (bsnprintf(dir, sizeof dir, "%s/%s", st->spool.root, stage_dir_name(st)) < 0)
		die_perm(EXIT_CONFIG, "%s: spool path too long", st->spool.root);
	/* Watch first, then scan: a name that arrives between the two is seen either way. */
	int wfd = st->once ? -1 : watch_open(dir);
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
	return wfd;
}

/* Due work of one turn of the loop: rescan, tick, names to look at again, space. Returns
 * the time (monotonic ms) the loop must wake at the latest. */
static int64_t stage_turn(struct stage *st, int64_t *next_tick)
{
	int64_t rescan_ms = (int64_t)st->conf->rescan_interval * 1000;
	int paused = stage_is_paused();
	if (!paused && now_ms_monotonic() >= stage_lp.next_rescan) {
		stage_scan(st);
		stage_lp.next_rescan = now_ms_monotonic() + rescan_ms;
	}
	if (st->tick && !paused && now_ms_monotonic() >= *next_tick) {
		int w = st->tick(st);
		int every = st->tick_ms > 0 ? st->tick_ms : 1000;
		*next_tick = now_ms_monotonic() + (w >= 0 && w < every ? w : every);
	}
	if (!paused)
		stage_later_run(st);
	int64_t due = INT64_MAX;
	if (!paused) {
		due = stage_lp.next_rescan;
		if (st->tick && *next_tick < due)
			due = *next_tick;
		if (stage_later_first() < due)
			due = stage_later_first();
	}
	if (stage_space_low) {
		if (stage_space_ok(st))
			stage_lp.next_rescan = due = 0; /* space is back: look at everything */
		else if (now_ms_monotonic() + 1000 < due)
			due = now_ms_monotonic() + 1000;
	}
	return due;
}

int stage_main(struct stage *st, int argc, char **argv)
{
	log_init(st->name);
	trace_set_prog(st->name);
	stage_ready_take();
	stage_options(st, argc, argv);
	int wfd = stage_start(st);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (tfd < 0)
		die_temp(NULL, "timerfd_create: %s", strerror(errno));
	int64_t next_tick = 0, next_metrics = 0;
	int was_paused = 0;
	stage_lp.next_rescan = 0;
	while (!stage_stopping()) {
		int64_t due = stage_turn(st, &next_tick);
		if (st->once) {
			stage_once_later(st);
			break;
		}
		/* Commit whatever the handlers prepared (events, retries, ticks) before waiting:
		 * nothing prepared may wait for the next event, nor for the metrics below. */
		if (st->flush)
			st->flush(st);
		/* Counters reach run/stats/ within a second, but are written at most once a
		 * second: a file per message would be a file creation on every message's path. */
		if (now_ms_monotonic() >= next_metrics) {
			metrics_flush(&st->spool, st->name);
			next_metrics = now_ms_monotonic() + 1000;
		}
		if (next_metrics < due)
			due = next_metrics;
		int woke = stage_wait(tfd, wfd, due);
		stage_signals_read();
		if (was_paused && !stage_paused)
			stage_lp.next_rescan =
			    0; /* resumed: look at everything that came meanwhile */
		was_paused = stage_paused;
		char name[1024];
		enum watch_event ev;
		while (wfd >= 0 && !stage_stop &&
		       (ev = watch_take(name, sizeof name)) != WATCH_NONE) {
			if (ev == WATCH_RESCAN)
				stage_lp.next_rescan = 0;
			else
				stage_event(st, name);
		}
		/* Idle: delete what finished work left in trash/, off the message path. */
		if (!woke && stage_lp.n == 0)
			spool_trash_empty(&st->spool);
	}
	for (size_t i = 0; i < stage_lp.n; i++)
		free(stage_lp.v[i].name);
	stage_lp.n = 0;
	if (st->flush)
		st->flush(st);
	metrics_flush(&st->spool, st->name);
	spool_trash_empty(&st->spool); /* what retired entries left, before we go */
	log_info(NULL, "stopping");
	watch_close();
	close(tfd);
	if (st->dir_name)
		close(st->dir_fd);
	spool_close(&st->spool);
	conf_free(st->conf);
	return 0;
}
