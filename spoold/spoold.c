/*
 * spoold - supervises the pipeline stages (s6-supervise's rules, in one process).
 *
 * Starts splitter, scanner-runner and router, each with its configured number of
 * instances, as children in the same session. A stage that dies is restarted after a
 * delay that starts at 1 s and doubles up to 60 s; a stage that dies 5 times within 60 s
 * is marked failed, loudly, and left down until spoold is restarted. SIGTERM stops every
 * stage (SIGTERM, then SIGKILL after 10 s) and exits. SIGHUP re-reads the config: an
 * invalid one is rejected with its error and the old one stays in force; a valid one
 * restarts the stages with it.
 *
 * run/status is rewritten atomically on every change, for spoolctl status. run/spoold.lock
 * is flock'd while spoold runs, so two supervisors never share a spool.
 *
 * DIAGNOSTICS
 *   Exit 78 on a config error at start, 75 when the spool is unusable or another spoold
 *   holds it, 64 on usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"
#include "spool.h"
#include "util.h"

#define RESTART_FLOOR_MS 1000
#define RESTART_MAX_MS 60000
#define FAIL_DEATHS 5
#define FAIL_WINDOW_MS 60000
#define STOP_GRACE_MS 10000

enum child_state { CH_DOWN, CH_RUNNING, CH_BACKOFF, CH_FAILED };

struct child {
	char stage[32];
	int idx;
	pid_t pid;
	enum child_state state;
	int64_t started_ms; /* monotonic */
	time_t started_wall;
	int64_t restart_at;
	int delay_ms;
	int restarts;
	int64_t deaths[FAIL_DEATHS];
	int n_deaths;
};

static struct child *sup_children;
static size_t sup_n;
static char sup_bindir[PATH_MAX];
static const char *sup_conf_path;
static struct conf *sup_conf;
static struct spool sup_spool;

static const char *sup_state_name(enum child_state s)
{
	static const char *n[] = {"down", "running", "backoff", "failed"};
	return n[s];
}

static void sup_find_bindir(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			char probe[PATH_MAX + 32];
			snprintf(probe, sizeof probe, "%s/splitter", self);
			if (access(probe, X_OK) == 0) {
				snprintf(sup_bindir, sizeof sup_bindir, "%s", self);
				return;
			}
		}
	}
	snprintf(sup_bindir, sizeof sup_bindir, "%s", LIBEXECDIR);
}

static void sup_children_build(const struct conf *c)
{
	struct {
		const char *name;
		int n;
	} stages[] = {{"splitter", c->splitter.instances},
	              {"scanner-runner", c->runner.instances},
	              {"router", c->router.instances}};
	sup_n = 0;
	for (size_t s = 0; s < ARRAY_LEN(stages); s++)
		sup_n += (size_t)stages[s].n;
	sup_children = xcalloc(sup_n ? sup_n : 1, sizeof *sup_children);
	size_t k = 0;
	for (size_t s = 0; s < ARRAY_LEN(stages); s++)
		for (int i = 0; i < stages[s].n; i++) {
			struct child *ch = &sup_children[k++];
			snprintf(ch->stage, sizeof ch->stage, "%s", stages[s].name);
			ch->idx = i;
			ch->state = CH_DOWN;
			ch->delay_ms = RESTART_FLOOR_MS;
		}
}

static void sup_status_write(void)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "spoold pid=%ld conf=", (long)getpid());
	escape_bytes(&b, sup_conf_path, strlen(sup_conf_path), 1024);
	buf_addstr(&b, "\n");
	for (size_t i = 0; i < sup_n; i++) {
		struct child *ch = &sup_children[i];
		buf_printf(&b, "stage name=%s idx=%d pid=%ld state=%s started=%lld restarts=%d\n",
		           ch->stage, ch->idx, (long)(ch->state == CH_RUNNING ? ch->pid : 0),
		           sup_state_name(ch->state), (long long)ch->started_wall, ch->restarts);
	}
	buf_addstr(&b, "end\n");
	if (write_file_atomic(sup_spool.fd[SD_RUN], "status", b.data, b.len, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/status: %s", sup_spool.root, strerror(errno));
	buf_free(&b);
}

static void sup_child_start(struct child *ch, const sigset_t *oldmask)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof path, "%s/%s", sup_bindir, ch->stage);
	pid_t pid = fork();
	if (pid < 0) {
		log_warn(NULL, "cannot fork %s: %s", ch->stage, strerror(errno));
		ch->state = CH_BACKOFF;
		ch->restart_at = now_ms_monotonic() + ch->delay_ms;
		return;
	}
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, oldmask, NULL);
		char *argv[] = {path, "-c", (char *)sup_conf_path, NULL};
		execv(path, argv);
		fprintf(stderr, "spoold: cannot exec %s: %s\n", path, strerror(errno));
		_exit(EXIT_TEMPFAIL);
	}
	ch->pid = pid;
	ch->state = CH_RUNNING;
	ch->started_ms = now_ms_monotonic();
	ch->started_wall = time(NULL);
	log_info(NULL, "started %s[%d] pid=%ld", ch->stage, ch->idx, (long)pid);
}

static void sup_child_died(struct child *ch, int status)
{
	int64_t now = now_ms_monotonic();
	char how[64];
	if (WIFEXITED(status))
		snprintf(how, sizeof how, "exit %d", WEXITSTATUS(status));
	else
		snprintf(how, sizeof how, "signal %d", WTERMSIG(status));
	ch->pid = 0;
	/* A stage that ran well for a while earns a fresh back-off. */
	if (now - ch->started_ms > RESTART_MAX_MS)
		ch->delay_ms = RESTART_FLOOR_MS;
	memmove(ch->deaths, ch->deaths + 1, sizeof ch->deaths - sizeof ch->deaths[0]);
	ch->deaths[FAIL_DEATHS - 1] = now;
	if (ch->n_deaths < FAIL_DEATHS)
		ch->n_deaths++;
	if (ch->n_deaths == FAIL_DEATHS && now - ch->deaths[0] < FAIL_WINDOW_MS) {
		ch->state = CH_FAILED;
		log_error(NULL, "%s[%d] died %d times within %d s (last: %s): marked FAILED, not "
		          "restarted; fix the cause and restart spoold",
		          ch->stage, ch->idx, FAIL_DEATHS, FAIL_WINDOW_MS / 1000, how);
		return;
	}
	ch->state = CH_BACKOFF;
	ch->restart_at = now + ch->delay_ms;
	log_warn(NULL, "%s[%d] died (%s); restart in %d ms", ch->stage, ch->idx, how, ch->delay_ms);
	ch->delay_ms = ch->delay_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : ch->delay_ms * 2;
	ch->restarts++;
}

static void sup_stop_all(void)
{
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_RUNNING)
			kill(sup_children[i].pid, SIGTERM);
	int64_t deadline = now_ms_monotonic() + STOP_GRACE_MS;
	for (;;) {
		size_t running = 0;
		for (size_t i = 0; i < sup_n; i++)
			if (sup_children[i].state == CH_RUNNING)
				running++;
		if (running == 0)
			break;
		int status;
		pid_t p = waitpid(-1, &status, WNOHANG);
		if (p > 0) {
			for (size_t i = 0; i < sup_n; i++)
				if (sup_children[i].state == CH_RUNNING && sup_children[i].pid == p) {
					sup_children[i].state = CH_DOWN;
					sup_children[i].pid = 0;
				}
			continue;
		}
		if (p < 0 && errno == ECHILD)
			break;
		if (now_ms_monotonic() > deadline) {
			for (size_t i = 0; i < sup_n; i++)
				if (sup_children[i].state == CH_RUNNING) {
					log_warn(NULL, "%s[%d] did not stop in time; SIGKILL",
					         sup_children[i].stage, sup_children[i].idx);
					kill(sup_children[i].pid, SIGKILL);
				}
			deadline = now_ms_monotonic() + 60000;
		}
		poll(NULL, 0, 20);
	}
}

int main(int argc, char **argv)
{
	sup_conf_path = "/etc/spoold/spoold.conf";
	log_init("spoold");
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			sup_conf_path = argv[++i];
		else
			die_perm(EXIT_USAGE, "usage: spoold [-c CONFIG]");
	}
	sup_conf = conf_load(sup_conf_path);
	spool_open(&sup_spool, sup_conf->spool_dir, 1);
	sup_find_bindir();

	int lock = openat(sup_spool.fd[SD_RUN], "spoold.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (lock < 0)
		die_temp(NULL, "cannot open %s/run/spoold.lock: %s", sup_spool.root, strerror(errno));
	if (flock(lock, LOCK_EX | LOCK_NB) < 0)
		die_temp(NULL, "another spoold already supervises %s (run/spoold.lock is locked)",
		         sup_spool.root);
	char pidline[32];
	int pl = snprintf(pidline, sizeof pidline, "%ld\n", (long)getpid());
	if (ftruncate(lock, 0) < 0 || pwrite(lock, pidline, (size_t)pl, 0) != pl)
		log_warn(NULL, "cannot write the pid into run/spoold.lock: %s", strerror(errno));

	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, &oldmask) < 0)
		die_temp(NULL, "sigprocmask: %s", strerror(errno));
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0)
		die_temp(NULL, "signalfd: %s", strerror(errno));
	signal(SIGPIPE, SIG_IGN);

	sup_children_build(sup_conf);
	for (size_t i = 0; i < sup_n; i++)
		sup_child_start(&sup_children[i], &oldmask);
	sup_status_write();
	log_info(NULL, "supervising %zu stage processes on %s", sup_n, sup_spool.root);

	int stop = 0;
	while (!stop) {
		int64_t now = now_ms_monotonic();
		int wait = 5000;
		for (size_t i = 0; i < sup_n; i++)
			if (sup_children[i].state == CH_BACKOFF) {
				int64_t d = sup_children[i].restart_at - now;
				if (d < wait)
					wait = d < 0 ? 0 : (int)d;
			}
		struct pollfd pfd = {.fd = sfd, .events = POLLIN};
		int pr = poll(&pfd, 1, wait);
		int changed = 0;
		if (pr > 0) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
				if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
					stop = 1;
				} else if (si.ssi_signo == SIGHUP) {
					char err[2048];
					struct conf *nc = conf_try_load(sup_conf_path, err, sizeof err);
					if (nc == NULL) {
						log_error(NULL, "SIGHUP: new config rejected, the old one "
						          "stays in force: %s", err);
					} else {
						log_info(NULL, "SIGHUP: config reloaded; restarting the "
						         "stages");
						sup_stop_all();
						free(sup_children);
						conf_free(sup_conf);
						sup_conf = nc;
						log_configure(nc->log_target, nc->log_level);
						sup_children_build(sup_conf);
						for (size_t i = 0; i < sup_n; i++)
							sup_child_start(&sup_children[i], &oldmask);
						changed = 1;
					}
				}
			}
		}
		int status;
		pid_t p;
		while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
			for (size_t i = 0; i < sup_n; i++)
				if (sup_children[i].state == CH_RUNNING && sup_children[i].pid == p) {
					sup_child_died(&sup_children[i], status);
					changed = 1;
				}
		}
		now = now_ms_monotonic();
		for (size_t i = 0; i < sup_n && !stop; i++)
			if (sup_children[i].state == CH_BACKOFF && sup_children[i].restart_at <= now) {
				sup_child_start(&sup_children[i], &oldmask);
				changed = 1;
			}
		if (changed)
			sup_status_write();
	}
	log_info(NULL, "stopping all stages");
	sup_stop_all();
	sup_status_write();
	unlinkat(sup_spool.fd[SD_RUN], "status", 0);
	log_info(NULL, "stopped");
	return 0;
}
