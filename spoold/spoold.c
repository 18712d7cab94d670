/*
 * spoold - supervises the pipeline stages (s6-supervise's rules, in one process).
 *
 * Starts splitter, scanner-runner and router, each with its configured number of
 * instances, as children in the same session. A stage that dies is restarted after a
 * delay that starts at 1 s and doubles up to 60 s; a stage instance that dies 5 times
 * within 60 s is marked failed, loudly, and left down until `spoolctl start STAGE`.
 *
 * Readiness: each child gets the write end of a pipe in SPOOLD_READY_FD and writes one
 * line once its start-up recovery is done (lib/stage.c); run/status shows it. When every
 * stage that should run is ready for the first time, spoold tells systemd (READY=1).
 *
 * Signals. SIGTERM stops every stage (SIGTERM, then SIGKILL after 10 s) and exits. SIGHUP
 * re-reads the config: an invalid one is rejected with its error and the old one stays in
 * force; with a valid one, only the stages whose settings changed are restarted (all of
 * them when a shared setting changed: spool, log, rescan interval, user).
 *
 * Control: run/control (lib/control.h) takes start, stop, restart, pause, resume for one
 * stage (all its instances); each client is read without blocking, with one deadline.
 * stop creates run/down/<stage> and start removes it: a stage with a down file is not
 * started, also not by the next spoold (s6's down file). pause sends SIGUSR1 (finish the
 * current message, claim nothing new); resume sends SIGUSR2; an instance started while
 * its stage is paused starts paused (SPOOLD_PAUSED=1).
 *
 * run/status is rewritten atomically on every change, for spoolctl status. run/spoold.lock
 * is flock'd while spoold runs, so two supervisors never share a spool. Every
 * metrics.interval seconds the metrics file is rewritten (promfile.c).
 *
 * DIAGNOSTICS
 *   Exit 78 on a config error at start (and as root without fs.protected_hardlinks), 75
 *   when the spool is unusable or another spoold holds it, 64 on usage errors.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "conf.h"
#include "control.h"
#include "exec.h"
#include "export.h"
#include "log.h"
#include "spool.h"
#include "spoold.h"
#include "user.h"
#include "util.h"
#include "version.h"

#define RESTART_FLOOR_MS 1000
#define RESTART_MAX_MS   60000
#define FAIL_DEATHS      5
#define FAIL_WINDOW_MS   60000
#define STOP_GRACE_MS    10000

enum child_state { CH_DOWN, CH_RUNNING, CH_BACKOFF, CH_FAILED, CH_STOPPED };

struct child {
	int si;     /* index into sup_stages */
	int keeper; /* the role whose keeper started it, or -1: spoold's own child */
	int idx;
	pid_t pid;
	enum child_state state;
	int ready;
	int ready_fd;       /* read end of the readiness pipe, -1 when none */
	int stopping;       /* we asked it to stop: its exit is not a death */
	int64_t started_ms; /* monotonic */
	time_t started_wall;
	int64_t restart_at;
	int delay_ms;
	int restarts;
	int64_t deaths[FAIL_DEATHS];
	int n_deaths;
};

struct stage_def {
	const char *name;
	int instances;
	int down;   /* run/down/<name> exists: not started until `spoolctl start` */
	int paused; /* SIGUSR1 sent; new instances start paused */
	int restarts;
};

/* The fourth "stage" is the bundled delivery agents: one instance per connector whose type
 * is smtp or maildir, each running connector-<type> -n <name>. */
#define SI_CONNECTORS 3
static struct stage_def sup_stages[N_STAGES] = {
    {.name = "splitter"},
    {.name = "scanner-runner"},
    {.name = "router"},
    {.name = "connectors"},
    /* The LMTP/SMTP intake: one instance when lmtp.enabled (it owns the socket). */
    {.name = "lmtpd"},
    /* The fleet's exporter: one instance with a fleet group that names a database. */
    {.name = "exporter"}};
static struct child *sup_children;
static size_t sup_n;
static char sup_bindir[PATH_MAX];
static const char *sup_conf_path;
static struct conf *sup_conf;
static struct spool sup_spool;
static sigset_t sup_oldmask;
static int sup_notified_ready;
/* Privilege separation: the keeper of each role whose user is not spoold's own (fd -1:
 * none, the role's stages are spoold's own children), and the stage binaries opened as
 * root at start, which keepers execute by descriptor. */
static struct keeper sup_keepers[ROLE__COUNT];
static const char *const sup_exe_names[] = {"splitter", "scanner-runner", "router",
                                            "lmtpd",    "connector-smtp", "connector-maildir"};
static int sup_exe_fd[ARRAY_LEN(sup_exe_names)];
static int sup_keeper_current = -1; /* the keeper whose records are being read */
static int sup_keeper_lost;
/* The scanner broker (spoold/broker.c): our end, for the scanner-runners; and its death. */
static int sup_broker_fd = -1;
static int sup_broker_died;

static const char *sup_state_name(enum child_state s)
{
	static const char *n[] = {"down", "running", "backoff", "failed", "stopped"};
	return n[s];
}

static int sup_stage_lookup(const char *name)
{
	for (int i = 0; i < N_STAGES; i++)
		if (strcmp(sup_stages[i].name, name) == 0)
			return i;
	return -1;
}

static void sup_find_bindir(void)
{
	char self[PATH_MAX], probe[PATH_MAX + 32];
	if (self_dir(self, sizeof self) == 0) {
		snprintf(probe, sizeof probe, "%s/splitter", self);
		if (access(probe, X_OK) == 0) {
			snprintf(sup_bindir, sizeof sup_bindir, "%s", self);
			return;
		}
		/* An installed tree moved as a whole (DESTDIR, a chroot, another PREFIX):
		 * sbin/spoold finds its stages in ../libexec/spoold beside it. */
		snprintf(probe, sizeof probe, "%s/../libexec/spoold/splitter", self);
		if (access(probe, X_OK) == 0 &&
		    bsnprintf(sup_bindir, sizeof sup_bindir, "%s/../libexec/spoold", self) == 0)
			return;
	}
	snprintf(sup_bindir, sizeof sup_bindir, "%s", LIBEXECDIR);
}

/* ---- children ------------------------------------------------------------------------ */

/* The n-th connector that has a bundled delivery agent (type smtp or maildir), or NULL. */
static const struct conf_connector *sup_connector_nth(const struct conf *c, int n)
{
	for (size_t i = 0; i < c->n_connectors; i++)
		if (c->connectors[i].type != CONN_NONE && n-- == 0)
			return &c->connectors[i];
	return NULL;
}

static int sup_connector_count(const struct conf *c)
{
	int n = 0;
	while (sup_connector_nth(c, n))
		n++;
	return n;
}

/* The exporter runs only where there is a database to ship to: a fleet group without a
 * conninfo keeps its records in export/ (docs/FLEET.md). */
static int sup_exporters(const struct conf *c)
{
	return c->fleet.enabled && c->fleet.conninfo[0] ? 1 : 0;
}

static int sup_down_file(const char *stage, int create)
{
	char path[128];
	snprintf(path, sizeof path, "down/%s", stage);
	if (!create)
		return unlinkat(sup_spool.fd[SD_RUN], path, 0) < 0 && errno != ENOENT ? -1 : 0;
	if (mkdirat(sup_spool.fd[SD_RUN], "down", 0750) < 0 && errno != EEXIST)
		return -1;
	/* The down file must survive a crash of the machine, or a stopped stage could come
	 * back by itself after a reboot. */
	int fd = openat(sup_spool.fd[SD_RUN], path, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	int r = fsync(fd);
	close(fd);
	return r;
}

static int sup_down_exists(const char *stage)
{
	char path[128];
	struct stat st;
	snprintf(path, sizeof path, "down/%s", stage);
	return fstatat(sup_spool.fd[SD_RUN], path, &st, 0) == 0;
}

/* Rebuild the child table for the current config; instances of stages not in
 * `rebuild` (a bitmask) are carried over unchanged from the old table. */
static void sup_children_build(unsigned rebuild)
{
	size_t total = 0;
	for (int s = 0; s < N_STAGES; s++)
		total += (size_t)sup_stages[s].instances;
	struct child *nc = xcalloc(total ? total : 1, sizeof *nc);
	size_t k = 0;
	for (int s = 0; s < N_STAGES; s++) {
		for (int i = 0; i < sup_stages[s].instances; i++) {
			struct child *ch = &nc[k++];
			struct child *old = NULL;
			if (!(rebuild & (1u << s)))
				for (size_t j = 0; j < sup_n; j++)
					if (sup_children[j].si == s && sup_children[j].idx == i)
						old = &sup_children[j];
			if (old) {
				*ch = *old;
				continue;
			}
			ch->si = s;
			ch->idx = i;
			ch->ready_fd = -1;
			ch->keeper = -1;
			ch->state = sup_stages[s].down ? CH_STOPPED : CH_DOWN;
			ch->delay_ms = RESTART_FLOOR_MS;
		}
	}
	free(sup_children);
	sup_children = nc;
	sup_n = total;
}

/* Why the config file on disk is not the one in force: set when a reload rejected it,
 * cleared by a reload that takes it. An administrator's typo must be loud (run/status for
 * spoolctl status, the metric spoold_config_ok, an error log line), while mail keeps
 * flowing on the config loaded before. */
static char sup_conf_error[2048];
static time_t sup_conf_error_since;

void sup_status_write(void)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "spoold pid=%ld conf=", (long)getpid());
	escape_bytes(&b, sup_conf_path, strlen(sup_conf_path), 1024);
	buf_addstr(&b, "\n");
	for (int s = 0; s < N_STAGES; s++)
		buf_printf(&b, "stagedef name=%s instances=%d down=%d paused=%d restarts=%d\n",
		           sup_stages[s].name, sup_stages[s].instances, sup_stages[s].down,
		           sup_stages[s].paused, sup_stages[s].restarts);
	for (size_t i = 0; i < sup_n; i++) {
		struct child *ch = &sup_children[i];
		buf_printf(
		    &b,
		    "stage name=%s idx=%d pid=%ld state=%s started=%lld restarts=%d ready=%d "
		    "paused=%d\n",
		    sup_stages[ch->si].name, ch->idx, (long)(ch->state == CH_RUNNING ? ch->pid : 0),
		    sup_state_name(ch->state), (long long)ch->started_wall, ch->restarts, ch->ready,
		    sup_stages[ch->si].paused);
	}
	buf_printf(&b, "config ok=%d since=%lld error=", sup_conf_error[0] == '\0',
	           (long long)sup_conf_error_since);
	escape_bytes(&b, sup_conf_error, strlen(sup_conf_error), sizeof sup_conf_error);
	buf_addstr(&b, "\n");
	buf_addstr(&b, "end\n");
	if (write_file_atomic(sup_spool.fd[SD_RUN], "status", b.data, b.len, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/status: %s", sup_spool.root, strerror(errno));
	buf_free(&b);
}

static void sup_child_died(struct child *ch, int status);

static void sup_child_running(struct child *ch, pid_t pid, int rp[2])
{
	if (rp[1] >= 0)
		close(rp[1]);
	if (ch->ready_fd >= 0)
		close(ch->ready_fd);
	ch->ready_fd = rp[0];
	ch->ready = 0;
	ch->pid = pid;
	ch->stopping = 0;
	ch->state = CH_RUNNING;
	ch->started_ms = now_ms_monotonic();
	ch->started_wall = time(NULL);
	log_info(NULL, "started %s[%d] pid=%ld%s%s", sup_stages[ch->si].name, ch->idx, (long)pid,
	         ch->keeper >= 0 ? " as " : "",
	         ch->keeper >= 0 ? sup_keepers[ch->keeper].user : "");
}

/* A keeper reported an exit: only a child that keeper started is taken to be dead (a
 * compromised keeper must not make spoold forget another user's stage). */
static void sup_keeper_exit(pid_t pid, int status)
{
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_RUNNING && sup_children[i].pid == pid &&
		    sup_children[i].keeper == sup_keeper_current)
			sup_child_died(&sup_children[i], status);
}

static int sup_exe_lookup(const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	for (size_t i = 0; i < ARRAY_LEN(sup_exe_names); i++)
		if (!strcmp(base, sup_exe_names[i]))
			return sup_exe_fd[i];
	return -1;
}

static void sup_keeper_gone(int role)
{
	if (sup_keepers[role].fd < 0)
		return;
	log_error(NULL,
	          "the keeper of user %s is gone: its stages can no longer be supervised; "
	          "stopping, to be started again as root",
	          sup_keepers[role].user);
	close(sup_keepers[role].fd);
	sup_keepers[role].fd = -1;
	sup_keeper_lost = 1;
	/* What it started cannot be signalled any more: not ours to wait for. */
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].keeper == role && sup_children[i].state == CH_RUNNING) {
			sup_children[i].state = CH_DOWN;
			sup_children[i].pid = 0;
		}
}

/* The stage runs as the role's user: its keeper forks and executes it. */
static void sup_child_start_kept(struct child *ch, int role, const char *path, const char *conn,
                                 int rp[2])
{
	const char *stage = sup_stages[ch->si].name;
	char *argv[] = {(char *)path,       "-c",         (char *)sup_conf_path,
	                conn ? "-n" : NULL, (char *)conn, NULL};
	sup_keeper_current = role;
	int broker = strcmp(stage, "scanner-runner") == 0 ? sup_broker_fd : -1;
	pid_t pid = keeper_spawn(&sup_keepers[role], (int)(ch - sup_children), sup_exe_lookup(path),
	                         argv, rp[1], broker, sup_stages[ch->si].paused, sup_keeper_exit);
	int err = errno;
	sup_keeper_current = -1;
	if (pid < 0) {
		log_warn(NULL, "cannot start %s as %s: %s", stage, sup_keepers[role].user,
		         strerror(err));
		if (rp[0] >= 0) {
			close(rp[0]);
			close(rp[1]);
		}
		if (err == EPIPE)
			sup_keeper_gone(role);
		ch->state = CH_BACKOFF;
		ch->restart_at = now_ms_monotonic() + ch->delay_ms;
		return;
	}
	ch->keeper = role;
	sup_child_running(ch, pid, rp);
}

/* Signal one running child: directly, or through the keeper that started it. */
static void sup_child_kill(struct child *ch, int sig)
{
	if (ch->keeper >= 0)
		keeper_kill(&sup_keepers[ch->keeper], ch->pid, sig);
	else
		kill(ch->pid, sig);
}

static void sup_child_start(struct child *ch)
{
	const char *stage = sup_stages[ch->si].name;
	char path[PATH_MAX + 64];
	const char *conn = NULL;
	if (ch->si == SI_CONNECTORS) {
		const struct conf_connector *cc = sup_connector_nth(sup_conf, ch->idx);
		if (cc == NULL)
			return;
		conn = cc->name;
		snprintf(path, sizeof path, "%s/connector-%s", sup_bindir,
		         cc->type == CONN_SMTP ? "smtp" : "maildir");
	} else {
		snprintf(path, sizeof path, "%s/%s", sup_bindir, stage);
	}
	int rp[2];
	if (pipe2(rp, O_CLOEXEC | O_NONBLOCK) < 0) {
		log_warn(NULL, "cannot make the readiness pipe for %s: %s", stage, strerror(errno));
		rp[0] = rp[1] = -1;
	}
	int role = conf_role_of_stage(stage);
	if (role >= 0 && sup_keepers[role].fd >= 0) {
		sup_child_start_kept(ch, role, path, conn, rp);
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		log_warn(NULL, "cannot fork %s: %s", stage, strerror(errno));
		if (rp[0] >= 0) {
			close(rp[0]);
			close(rp[1]);
		}
		ch->state = CH_BACKOFF;
		ch->restart_at = now_ms_monotonic() + ch->delay_ms;
		return;
	}
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, &sup_oldmask, NULL);
		if (rp[1] >= 0) {
			/* The one descriptor the stage inherits on purpose. The write end must be
			 * blocking for the child: clear O_NONBLOCK as well as FD_CLOEXEC. */
			char num[16];
			fcntl(rp[1], F_SETFL, 0);
			fcntl(rp[1], F_SETFD, 0);
			snprintf(num, sizeof num, "%d", rp[1]);
			setenv("SPOOLD_READY_FD", num, 1);
		}
		if (sup_broker_fd >= 0 && strcmp(stage, "scanner-runner") == 0) {
			/* Inherited on purpose too: the runner's way to the scanner broker. */
			char bnum[16];
			fcntl(sup_broker_fd, F_SETFD, 0);
			snprintf(bnum, sizeof bnum, "%d", sup_broker_fd);
			setenv(BROKER_ENV, bnum, 1);
		}
		if (sup_stages[ch->si].paused)
			setenv("SPOOLD_PAUSED", "1", 1);
		else
			unsetenv("SPOOLD_PAUSED");
		char *argv[] = {path,         "-c", (char *)sup_conf_path, conn ? "-n" : NULL,
		                (char *)conn, NULL};
		execv(path, argv);
		fprintf(stderr, "spoold: cannot exec %s: %s\n", path, strerror(errno));
		_exit(EXIT_TEMPFAIL);
	}
	ch->keeper = -1;
	sup_child_running(ch, pid, rp);
}

static void sup_child_gone(struct child *ch)
{
	ch->pid = 0;
	ch->ready = 0;
	if (ch->ready_fd >= 0) {
		close(ch->ready_fd);
		ch->ready_fd = -1;
	}
}

static void sup_child_died(struct child *ch, int status)
{
	const char *stage = sup_stages[ch->si].name;
	int64_t now = now_ms_monotonic();
	char how[64];
	if (WIFEXITED(status))
		snprintf(how, sizeof how, "exit %d", WEXITSTATUS(status));
	else
		snprintf(how, sizeof how, "signal %d", WTERMSIG(status));
	sup_child_gone(ch);
	if (ch->stopping) {
		/* We asked for it (stop, restart, reload): not a death. */
		ch->stopping = 0;
		ch->state = sup_stages[ch->si].down ? CH_STOPPED : CH_DOWN;
		log_info(NULL, "%s[%d] stopped (%s)", stage, ch->idx, how);
		return;
	}
	/* A stage that ran well for a while earns a fresh back-off. */
	if (now - ch->started_ms > RESTART_MAX_MS)
		ch->delay_ms = RESTART_FLOOR_MS;
	memmove(ch->deaths, ch->deaths + 1, sizeof ch->deaths - sizeof ch->deaths[0]);
	ch->deaths[FAIL_DEATHS - 1] = now;
	if (ch->n_deaths < FAIL_DEATHS)
		ch->n_deaths++;
	if (ch->n_deaths == FAIL_DEATHS && now - ch->deaths[0] < FAIL_WINDOW_MS) {
		ch->state = CH_FAILED;
		log_error(NULL,
		          "%s[%d] died %d times within %d s (last: %s): marked FAILED, not "
		          "restarted; fix the cause, then `spoolctl start %s`",
		          stage, ch->idx, FAIL_DEATHS, FAIL_WINDOW_MS / 1000, how, stage);
		return;
	}
	ch->state = CH_BACKOFF;
	ch->restart_at = now + ch->delay_ms;
	log_warn(NULL, "%s[%d] died (%s); restart in %d ms", stage, ch->idx, how, ch->delay_ms);
	ch->delay_ms = ch->delay_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : ch->delay_ms * 2;
	ch->restarts++;
	sup_stages[ch->si].restarts++;
}

static void sup_reap(void)
{
	int status;
	pid_t p;
	while ((p = waitpid(-1, &status, WNOHANG)) > 0)
		if (broker_reaped(p, status))
			sup_broker_died = 1;
		else
			for (size_t i = 0; i < sup_n; i++)
				if (sup_children[i].state == CH_RUNNING &&
				    sup_children[i].pid == p && sup_children[i].keeper < 0)
					sup_child_died(&sup_children[i], status);
	for (int r = 0; r < ROLE__COUNT; r++) {
		if (sup_keepers[r].fd < 0)
			continue;
		sup_keeper_current = r;
		if (keeper_drain(&sup_keepers[r], sup_keeper_exit) < 0)
			sup_keeper_gone(r);
		sup_keeper_current = -1;
	}
}

/* Stop the instances of the stages in mask (all: ~0u) and wait for them: SIGTERM, then
 * SIGKILL after STOP_GRACE_MS. Other children that die meanwhile are handled as usual. */
static void sup_stop(unsigned mask)
{
	for (size_t i = 0; i < sup_n; i++) {
		struct child *ch = &sup_children[i];
		if (!(mask & (1u << ch->si)))
			continue;
		if (ch->state == CH_RUNNING) {
			ch->stopping = 1;
			sup_child_kill(ch, SIGTERM);
		} else if (ch->state == CH_BACKOFF) {
			ch->state = CH_DOWN;
		}
	}
	int64_t deadline = now_ms_monotonic() + STOP_GRACE_MS;
	int killed = 0;
	for (;;) {
		sup_reap();
		size_t running = 0;
		for (size_t i = 0; i < sup_n; i++)
			if (sup_children[i].stopping && sup_children[i].state == CH_RUNNING)
				running++;
		if (running == 0)
			break;
		if (!killed && now_ms_monotonic() > deadline) {
			for (size_t i = 0; i < sup_n; i++)
				if (sup_children[i].stopping &&
				    sup_children[i].state == CH_RUNNING) {
					log_warn(NULL, "%s[%d] did not stop in %d s; SIGKILL",
					         sup_stages[sup_children[i].si].name,
					         sup_children[i].idx, STOP_GRACE_MS / 1000);
					sup_child_kill(&sup_children[i], SIGKILL);
				}
			killed = 1;
		}
		poll(NULL, 0, 20);
	}
}

static void sup_start_stage(int si)
{
	for (size_t i = 0; i < sup_n; i++) {
		struct child *ch = &sup_children[i];
		if (ch->si != si || ch->state == CH_RUNNING)
			continue;
		ch->n_deaths = 0;
		ch->delay_ms = RESTART_FLOOR_MS;
		sup_child_start(ch);
	}
}

static void sup_signal_stage(int si, int sig)
{
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].si == si && sup_children[i].state == CH_RUNNING)
			sup_child_kill(&sup_children[i], sig);
}

/* ---- control socket ---------------------------------------------------------------- */

/* The actions behind the control socket (spoold.h); the server is in control.c. */
void sup_control_do(const char *cmd, const char *stage, struct buf *reply)
{
	int si = sup_stage_lookup(stage);
	if (si < 0) {
		buf_printf(
		    reply,
		    "error unknown stage \"%.64s\" (splitter, scanner-runner, router, connectors, "
		    "lmtpd, exporter)",
		    stage);
		return;
	}
	struct stage_def *sd = &sup_stages[si];
	if (strcmp(cmd, "start") == 0) {
		if (sup_down_file(stage, 0) < 0) {
			buf_printf(reply, "error cannot remove run/down/%s: %s", stage,
			           strerror(errno));
			return;
		}
		sd->down = 0;
		for (size_t i = 0; i < sup_n; i++)
			if (sup_children[i].si == si && sup_children[i].state != CH_RUNNING)
				sup_children[i].state = CH_DOWN;
		sup_start_stage(si);
		log_info(NULL, "control: start %s", stage);
		buf_printf(reply, "ok %s started", stage);
	} else if (strcmp(cmd, "stop") == 0) {
		if (sup_down_file(stage, 1) < 0) {
			buf_printf(reply, "error cannot create run/down/%s: %s", stage,
			           strerror(errno));
			return;
		}
		sd->down = 1;
		log_info(NULL, "control: stop %s", stage);
		sup_stop(1u << si);
		for (size_t i = 0; i < sup_n; i++)
			if (sup_children[i].si == si && sup_children[i].state != CH_RUNNING)
				sup_children[i].state = CH_STOPPED;
		buf_printf(reply, "ok %s stopped", stage);
	} else if (strcmp(cmd, "restart") == 0) {
		if (sd->down) {
			buf_printf(reply, "error %s is stopped; use start", stage);
			return;
		}
		log_info(NULL, "control: restart %s", stage);
		sup_stop(1u << si);
		sup_start_stage(si);
		buf_printf(reply, "ok %s restarted", stage);
	} else if (strcmp(cmd, "pause") == 0) {
		sd->paused = 1;
		sup_signal_stage(si, SIGUSR1);
		log_info(NULL, "control: pause %s", stage);
		buf_printf(reply, "ok %s paused", stage);
	} else if (strcmp(cmd, "resume") == 0) {
		sd->paused = 0;
		sup_signal_stage(si, SIGUSR2);
		log_info(NULL, "control: resume %s", stage);
		buf_printf(reply, "ok %s resumed", stage);
	} else {
		buf_printf(reply, "error unknown command \"%.32s\"", cmd);
	}
}

/* ---- readiness --------------------------------------------------------------------- */

static int sup_ready_poll(struct pollfd *pfd, size_t *map, size_t max)
{
	size_t k = 0;
	for (size_t i = 0; i < sup_n && k < max; i++)
		if (sup_children[i].ready_fd >= 0) {
			pfd[k].fd = sup_children[i].ready_fd;
			pfd[k].events = POLLIN;
			pfd[k].revents = 0;
			map[k++] = i;
		}
	return (int)k;
}

static int sup_ready_read(struct child *ch)
{
	char tmp[64];
	ssize_t r = read(ch->ready_fd, tmp, sizeof tmp);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	/* A line means ready; EOF without it means the stage exited or closed the descriptor
	 * early: either way there is nothing more to read. */
	if (r > 0 && memchr(tmp, '\n', (size_t)r) && ch->state == CH_RUNNING) {
		ch->ready = 1;
		log_info(NULL, "%s[%d] ready pid=%ld", sup_stages[ch->si].name, ch->idx,
		         (long)ch->pid);
	}
	close(ch->ready_fd);
	ch->ready_fd = -1;
	return 1;
}

static void sup_maybe_notify_ready(void)
{
	if (sup_notified_ready)
		return;
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_RUNNING && !sup_children[i].ready)
			return;
	sup_notified_ready = 1;
	notify_send("READY=1\nSTATUS=supervising the stages");
}

/* ---- reload ------------------------------------------------------------------------ */

static void sup_stage_defs(const struct conf *c)
{
	int n[N_STAGES] = {c->splitter.instances,  c->runner.instances,     c->router.instances,
	                   sup_connector_count(c), c->lmtp.enabled ? 1 : 0, sup_exporters(c)};
	for (int s = 0; s < N_STAGES; s++) {
		sup_stages[s].instances = n[s];
		sup_stages[s].down = sup_down_exists(sup_stages[s].name);
	}
}

/* 1 when the settings the stage (NULL: every stage) reads differ between two loads: the
 * signatures come from the schema's stage column (lib/conf_schema.c). */
static int sup_settings_changed(const struct conf *a, const struct conf *b, const char *stage)
{
	char *sa = conf_stage_signature(a, stage);
	char *sb = conf_stage_signature(b, stage);
	int changed = strcmp(sa, sb) != 0;
	free(sa);
	free(sb);
	return changed;
}

static void sup_metrics(void);

static void sup_reload(void)
{
	char err[2048];
	struct conf *nc = conf_try_load(sup_conf_path, err, sizeof err);
	if (nc == NULL) {
		log_error(NULL, "SIGHUP: new config rejected, the old one stays in force: %s", err);
		if (sup_conf_error[0] == '\0')
			sup_conf_error_since = time(NULL);
		snprintf(sup_conf_error, sizeof sup_conf_error, "%s", err);
		sup_status_write();
		sup_metrics();
		return;
	}
	sup_conf_error[0] = '\0';
	sup_conf_error_since = 0;
	/* The user and the control socket's group are applied once, by root, at start: after
	 * the drop nothing can change them. Say so rather than claim a restart of the
	 * stages made them take effect. */
	if (strcmp(nc->user ? nc->user : "", sup_conf->user ? sup_conf->user : "") != 0)
		log_warn(NULL,
		         "SIGHUP: user changed (\"%s\" to \"%s\"): it takes effect only when "
		         "spoold itself restarts (systemctl restart spoold); the stages keep "
		         "the old user until then",
		         sup_conf->user ? sup_conf->user : "", nc->user ? nc->user : "");
	if (strcmp(nc->control_group ? nc->control_group : "",
	           sup_conf->control_group ? sup_conf->control_group : "") != 0)
		log_warn(NULL, "SIGHUP: control_group changed: it takes effect only when spoold "
		               "itself restarts (systemctl restart spoold)");
	notify_send("RELOADING=1");
	int all = sup_settings_changed(sup_conf, nc, NULL);
	unsigned mask = 0;
	int n_old[N_STAGES] = {sup_conf->splitter.instances,   sup_conf->runner.instances,
	                       sup_conf->router.instances,     sup_connector_count(sup_conf),
	                       sup_conf->lmtp.enabled ? 1 : 0, sup_exporters(sup_conf)};
	int n_new[N_STAGES] = {nc->splitter.instances,   nc->runner.instances,
	                       nc->router.instances,     sup_connector_count(nc),
	                       nc->lmtp.enabled ? 1 : 0, sup_exporters(nc)};
	for (int s = 0; s < N_STAGES; s++)
		if (all || sup_settings_changed(sup_conf, nc, sup_stages[s].name) ||
		    n_old[s] != n_new[s])
			mask |= 1u << s;
	if (mask == 0)
		log_info(NULL, "SIGHUP: config reloaded; no stage settings changed");
	else
		log_info(NULL, "SIGHUP: config reloaded; restarting%s%s%s%s%s%s%s",
		         all ? " all stages (shared settings changed):" : "",
		         mask & 1 ? " splitter" : "", mask & 2 ? " scanner-runner" : "",
		         mask & 4 ? " router" : "", mask & 8 ? " connectors" : "",
		         mask & 16 ? " lmtpd" : "", mask & 32 ? " exporter" : "");
	sup_stop(mask);
	conf_free(sup_conf);
	sup_conf = nc;
	log_configure(nc->log_target, nc->log_level);
	sup_stage_defs(sup_conf);
	sup_children_build(mask);
	for (size_t i = 0; i < sup_n; i++)
		if ((mask & (1u << sup_children[i].si)) && sup_children[i].state == CH_DOWN)
			sup_child_start(&sup_children[i]);
	notify_send("READY=1");
}

static void sup_metrics(void)
{
	struct sup_stage_info info[N_STAGES];
	for (int s = 0; s < N_STAGES; s++) {
		info[s].name = sup_stages[s].name;
		info[s].instances = sup_stages[s].instances;
		info[s].restarts = sup_stages[s].restarts;
		info[s].up = 0;
	}
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_RUNNING)
			info[sup_children[i].si].up++;
	prom_write(sup_conf, &sup_spool, info, N_STAGES, sup_conf_error[0] == '\0');
}

/* run/spoold.lock, opened as root at start in run/, which the spool's user owns: never
 * through a symlink (O_NOFOLLOW), and only a regular file with one name, owned by us, by
 * root or by that user. Anything else there (a symlink to /etc/shadow, a hard link, a
 * fifo, a directory) was planted: it is removed (unlinkat never follows) and a fresh file
 * made in its place. A live spoold's lock always passes the check, so replacing never
 * breaks the mutual exclusion. */
static int sup_lock_open(uid_t user_uid)
{
	int run = sup_spool.fd[SD_RUN];
	for (int tries = 0; tries < 3; tries++) {
		int fd =
		    openat(run, "spoold.lock",
		           O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0640);
		const char *what;
		if (fd >= 0) {
			struct stat st;
			if (fstat(fd, &st) < 0)
				die_temp(NULL, "cannot stat %s/run/spoold.lock: %s", sup_spool.root,
				         strerror(errno));
			if (S_ISREG(st.st_mode) && st.st_nlink == 1 &&
			    (st.st_uid == geteuid() || st.st_uid == 0 || st.st_uid == user_uid))
				return fd;
			/* Held by a live spoold after all (one that dropped to another user, say):
			 * replacing it would let two supervisors share the spool. */
			if (flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK)
				die_temp(NULL,
				         "another spoold already supervises %s (run/spoold.lock is "
				         "locked)",
				         sup_spool.root);
			close(fd);
			what = !S_ISREG(st.st_mode) ? "not a regular file"
			       : st.st_nlink != 1   ? "a file with more than one name (a hard link)"
			                            : "owned by another user";
		} else if (errno == ELOOP) {
			what = "a symlink";
		} else if (errno == EISDIR || errno == ENXIO || errno == EOPNOTSUPP) {
			what = "not a regular file";
		} else {
			die_temp(NULL, "cannot open %s/run/spoold.lock: %s", sup_spool.root,
			         strerror(errno));
		}
		log_warn(NULL, "%s/run/spoold.lock is %s: replacing it with a fresh lock file",
		         sup_spool.root, what);
		if (unlinkat(run, "spoold.lock", 0) < 0 && errno != ENOENT &&
		    (errno != EISDIR || unlinkat(run, "spoold.lock", AT_REMOVEDIR) < 0))
			die_temp(NULL, "cannot remove %s/run/spoold.lock: %s", sup_spool.root,
			         strerror(errno));
	}
	die_temp(NULL, "%s/run/spoold.lock keeps being replaced; giving up", sup_spool.root);
}

/* As root, before the drop: a keeper for each role that runs as a user other than the one
 * spoold becomes, and the stage binaries opened for them. Nothing when spoold does not
 * drop (not root, or root on purpose): every stage is then spoold's own child. */
static void sup_keepers_start(uid_t spool_uid)
{
	for (int r = 0; r < ROLE__COUNT; r++)
		sup_keepers[r].fd = -1;
	for (size_t i = 0; i < ARRAY_LEN(sup_exe_fd); i++)
		sup_exe_fd[i] = -1;
	if (spool_uid == (uid_t)-1 || !sup_conf->separated)
		return;
	/* Separated, a work directory made by one stage is moved on by another (rename(2) of
	 * a directory to a new parent needs write permission on it) and emptied from trash/
	 * by any: directories are the spool group's to write (their mkdir asks 0770, which
	 * umask 027 makes 0750 when one user runs everything). Files stay 0640: only their
	 * owner writes them, which is what the readers trust. Inherited by keepers and
	 * stages. */
	umask(007);
	for (size_t i = 0; i < ARRAY_LEN(sup_exe_names); i++) {
		char path[PATH_MAX + 64];
		snprintf(path, sizeof path, "%s/%s", sup_bindir, sup_exe_names[i]);
		/* O_PATH: executed by descriptor (execveat); a stage's user need not be able to
		 * reach the directory. A binary that is missing only fails that stage. */
		sup_exe_fd[i] = open(path, O_PATH | O_CLOEXEC);
		if (sup_exe_fd[i] < 0)
			log_warn(NULL, "cannot open %s: %s", path, strerror(errno));
	}
	for (int r = ROLE_SPOOL + 1; r < ROLE__COUNT; r++) {
		const struct conf_role_user *ru = &sup_conf->roles[r];
		if (ru->uid == spool_uid || ru->uid == (uid_t)-1)
			continue;
		/* One keeper per role; two roles given one user get two keepers of that user,
		 * which is as safe and keeps the bookkeeping per role. */
		keeper_start(&sup_keepers[r], ru->name, r == ROLE_SPLITTER);
		log_info(NULL, "%s runs as %s (uid %ld)", conf_role_name((enum conf_role)r),
		         ru->name, (long)ru->uid);
	}
}

/* As root, before the drop: the lock, the control socket, the scanner broker and the
 * keepers, then privs_drop. Returns the control socket, or -1 (logged: the stages run
 * without remote control). */
static int sup_start_privileged(void)
{
	uid_t uid = (uid_t)-1;
	gid_t ugid = (gid_t)-1;
	int dropping = privs_target(sup_conf, &uid, &ugid);
	int lock = sup_lock_open(uid);
	if (flock(lock, LOCK_EX | LOCK_NB) < 0)
		die_temp(NULL, "another spoold already supervises %s (run/spoold.lock is locked)",
		         sup_spool.root);
	char pidline[32];
	int pl = snprintf(pidline, sizeof pidline, "%ld\n", (long)getpid());
	if (ftruncate(lock, 0) < 0 || pwrite(lock, pidline, (size_t)pl, 0) != pl)
		log_warn(NULL, "cannot write the pid into run/spoold.lock: %s", strerror(errno));

	/* The socket is made before dropping privileges so that its group can be set to
	 * control_group even when the spoold user is not a member; it belongs to the user
	 * spoold becomes, or only root could use it. */
	gid_t cgid = privs_control_gid(sup_conf);
	int cfd = control_listen(sup_spool.fd[SD_RUN], dropping ? uid : (uid_t)-1,
	                         cgid != (gid_t)-1 ? cgid
	                         : dropping        ? ugid
	                                           : (gid_t)-1,
	                         cgid != (gid_t)-1 ? 0660 : 0600);
	/* Supervision matters more than remote control: without the socket (a spool path
	 * too long for sun_path, say) the stages still run, and spoolctl says why not. */
	if (cfd < 0)
		log_error(NULL,
		          "cannot listen on %s/run/" CONTROL_NAME ": %s; spoolctl start, "
		          "stop, restart, pause and resume will not work",
		          sup_spool.root, strerror(errno));
	/* Before the drop: the broker becomes scanner_user, which needs root. It takes
	 * requests from the scanner-runner's user only. */
	sup_broker_fd = broker_spawn(sup_conf,
	                             dropping && sup_conf->roles[ROLE_RUNNER].uid != (uid_t)-1
	                                 ? sup_conf->roles[ROLE_RUNNER].uid
	                             : dropping ? uid
	                                        : geteuid(),
	                             dropping ? ugid : getegid());
	sup_keepers_start(dropping ? uid : (uid_t)-1);
	privs_drop(sup_conf, &sup_spool, cgid);
	return cfd;
}

/* The signals spoold acts on, blocked and read through a signalfd, so that the loop
 * polls them with everything else. */
static int sup_signalfd(void)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, &sup_oldmask) < 0)
		die_temp(NULL, "sigprocmask: %s", strerror(errno));
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0)
		die_temp(NULL, "signalfd: %s", strerror(errno));
	return sfd;
}

/* One turn of the loop: wait for a signal, a readiness line, a control client or the next
 * deadline (a restart, a client's, the metrics), then act on what came. 1 when SIGTERM or
 * SIGINT asks spoold to stop. */
static int sup_turn(int sfd, int cfd, int64_t *next_metrics)
{
	int stop = 0;
	int64_t now = now_ms_monotonic();
	int64_t wait = *next_metrics - now;
	if (wait > 5000)
		wait = 5000;
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_BACKOFF) {
			int64_t d = sup_children[i].restart_at - now;
			if (d < wait)
				wait = d;
		}
	int64_t ctl_wait = sup_ctl_expire();
	if (ctl_wait >= 0 && ctl_wait < wait)
		wait = ctl_wait;
	if (wait < 0)
		wait = 0;
	struct pollfd pfd[2 + CTL_MAX + 256 + ROLE__COUNT];
	size_t map[256];
	pfd[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
	pfd[1] = (struct pollfd){.fd = cfd, .events = POLLIN};
	for (int i = 0; i < CTL_MAX; i++)
		pfd[2 + i] = (struct pollfd){.fd = sup_ctl[i].fd, .events = POLLIN};
	int nr = sup_ready_poll(pfd + 2 + CTL_MAX, map, 256);
	/* The keepers' sockets: a separated stage's death comes as a keeper's message, not
	 * as our SIGCHLD, and must wake us as promptly (sup_reap drains them). */
	int nk = 0;
	for (int r = 0; r < ROLE__COUNT; r++)
		if (sup_keepers[r].fd >= 0)
			pfd[2 + CTL_MAX + nr + nk++] =
			    (struct pollfd){.fd = sup_keepers[r].fd, .events = POLLIN};
	int pr = poll(pfd, (nfds_t)(2 + CTL_MAX + nr + nk), (int)wait);
	if (pr < 0 && errno != EINTR)
		die_temp(NULL, "poll: %s", strerror(errno));
	int changed = 0;
	if (pr > 0 && (pfd[0].revents & POLLIN)) {
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
			if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
				stop = 1;
			} else if (si.ssi_signo == SIGHUP) {
				sup_reload();
				changed = 1;
			}
		}
	}
	if (pr > 0)
		for (int k = 0; k < nr; k++)
			if (pfd[2 + CTL_MAX + k].revents && map[k] < sup_n &&
			    sup_children[map[k]].ready_fd == pfd[2 + CTL_MAX + k].fd)
				changed |= sup_ready_read(&sup_children[map[k]]);
	size_t before = 0;
	for (size_t i = 0; i < sup_n; i++)
		before += sup_children[i].state == CH_RUNNING;
	sup_reap();
	size_t after = 0;
	for (size_t i = 0; i < sup_n; i++)
		after += sup_children[i].state == CH_RUNNING;
	if (after != before)
		changed = 1;
	now = now_ms_monotonic();
	for (size_t i = 0; i < sup_n && !stop; i++)
		if (sup_children[i].state == CH_BACKOFF && sup_children[i].restart_at <= now) {
			sup_child_start(&sup_children[i]);
			changed = 1;
		}
	for (int i = 0; i < CTL_MAX && !stop && pr > 0; i++)
		if (sup_ctl[i].fd >= 0 && sup_ctl[i].fd == pfd[2 + i].fd && pfd[2 + i].revents)
			sup_ctl_read(&sup_ctl[i]);
	if (!stop && pr > 0 && (pfd[1].revents & POLLIN))
		sup_control_accept(cfd);
	if (changed)
		sup_status_write();
	sup_maybe_notify_ready();
	if (now_ms_monotonic() >= *next_metrics) {
		sup_metrics();
		*next_metrics = now_ms_monotonic() + sup_conf->metrics.interval * 1000LL;
	}
	return stop;
}

int main(int argc, char **argv)
{
	sup_conf_path = "/etc/spoold/spoold.conf";
	log_init("spoold");
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			sup_conf_path = argv[++i];
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit("spoold");
		else
			die_perm(EXIT_USAGE, "usage: spoold [-c CONFIG] [--version]");
	}
	/* Files 0640, directories 0750 at most: the spool holds other people's mail. The
	 * stages inherit this umask. */
	umask(027);
	/* An inherited SIGCHLD SIG_IGN has the kernel reap the stages itself: sup_reap would
	 * never see one die, and each would pass it on to its own children. */
	if (exec_sigchld_default() < 0)
		die_temp(NULL, "cannot reset SIGCHLD: %s", strerror(errno));
	sup_conf = conf_load(sup_conf_path);
	user_root_check(sup_conf, "spoold");
	privs_check_kernel();
	spool_open(&sup_spool, sup_conf->spool_dir, 1);
	/* export/ exists before any stage writes a record (docs/FLEET.md). */
	int xfd = sup_conf->fleet.enabled ? export_dir_open(&sup_spool, 1) : -2;
	if (xfd == -1)
		die_temp(NULL, "cannot make %s/export: %s", sup_spool.root, strerror(errno));
	if (xfd >= 0)
		close(xfd);
	/* Said once, at start: safe either way, but an administrator should know. */
	if (!sup_spool.rename_journaled)
		log_warn(NULL,
		         "the filesystem of %s does not journal renames (ext4 without a journal, "
		         "or unknown): every move fsyncs both directories; a journaling filesystem "
		         "(ext4 with its journal, XFS) is faster for a spool",
		         sup_spool.root);
	sup_find_bindir();

	int cfd = sup_start_privileged();
	int sfd = sup_signalfd();
	signal(SIGPIPE, SIG_IGN);
	sup_ctl_init();

	sup_stage_defs(sup_conf);
	sup_children_build(~0u);
	for (size_t i = 0; i < sup_n; i++) {
		if (sup_children[i].state == CH_STOPPED)
			log_info(NULL, "%s[%d] stays stopped (run/down/%s exists)",
			         sup_stages[sup_children[i].si].name, sup_children[i].idx,
			         sup_stages[sup_children[i].si].name);
		else
			sup_child_start(&sup_children[i]);
	}
	sup_status_write();
	sup_metrics();
	int64_t next_metrics = now_ms_monotonic() + sup_conf->metrics.interval * 1000LL;
	log_info(NULL, "supervising %zu stage processes on %s", sup_n, sup_spool.root);

	int stop = 0;
	while (!stop && !sup_keeper_lost && !sup_broker_died)
		stop = sup_turn(sfd, cfd, &next_metrics);
	notify_send("STOPPING=1");
	log_info(NULL, "stopping all stages");
	sup_stop(~0u);
	sup_metrics();
	sup_status_write();
	unlinkat(sup_spool.fd[SD_RUN], "status", 0);
	for (int i = 0; i < CTL_MAX; i++)
		if (sup_ctl[i].fd >= 0)
			sup_ctl_close(&sup_ctl[i]);
	if (cfd >= 0) {
		close(cfd);
		unlinkat(sup_spool.fd[SD_RUN], CONTROL_NAME, 0);
	}
	log_info(NULL, "stopped");
	return sup_keeper_lost || sup_broker_died ? EXIT_TEMPFAIL : 0;
}
