/*
 * children - spoold's stage processes: the child table, start (as spoold's own child or
 * through the keeper of the stage's user), reap, back-off and the "failed" rule, stop and
 * signal, the readiness pipes, and the keepers started as root (the rules are in
 * spoold.c's header; the state shared with spoold.c is in children.h).
 *
 * DIAGNOSTICS
 *   Nothing here dies after start: a stage that cannot be started (pipe, fork, exec, its
 *   keeper) is logged and put in back-off; a keeper that is gone is logged and sets
 *   sup_keeper_lost, which stops spoold. keeper_start dies when a keeper cannot be made.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "children.h"
#include "conf.h"
#include "log.h"
#include "spool.h"
#include "spoold.h"
#include "util.h"

#define RESTART_FLOOR_MS 1000
#define RESTART_MAX_MS   60000
#define FAIL_WINDOW_MS   60000
#define STOP_GRACE_MS    10000

/* The fourth "stage" is the bundled delivery agents: one instance per connector whose type
 * is smtp or maildir, each running connector-<type> -n <name>. */
#define SI_CONNECTORS 3
struct stage_def sup_stages[N_STAGES] = {
    {.name = "splitter"},
    {.name = "scanner-runner"},
    {.name = "router"},
    {.name = "connectors"},
    /* The LMTP/SMTP intake: one instance when lmtp.enabled (it owns the socket). */
    {.name = "lmtpd"},
    /* The fleet's exporter: one instance with a fleet group that names a database. */
    {.name = "exporter"}};
struct child *sup_children;
size_t sup_n;
/* Privilege separation: the keeper of each role whose user is not spoold's own (fd -1:
 * none, the role's stages are spoold's own children), and the stage binaries opened as
 * root at start, which keepers execute by descriptor. */
struct keeper sup_keepers[ROLE__COUNT];
static const char *const sup_exe_names[] = {"splitter", "scanner-runner", "router",
                                            "lmtpd",    "connector-smtp", "connector-maildir"};
static int sup_exe_fd[ARRAY_LEN(sup_exe_names)];
static int sup_keeper_current = -1; /* the keeper whose records are being read */
int sup_keeper_lost;
/* The scanner broker (spoold/broker.c): our end, for the scanner-runners; and its death. */
int sup_broker_fd = -1;
int sup_broker_died;

const char *sup_state_name(enum child_state s)
{
	static const char *n[] = {"down", "running", "backoff", "failed", "stopped"};
	return n[s];
}

int sup_stage_lookup(const char *name)
{
	for (int i = 0; i < N_STAGES; i++)
		if (strcmp(sup_stages[i].name, name) == 0)
			return i;
	return -1;
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

int sup_connector_count(const struct conf *c)
{
	int n = 0;
	while (sup_connector_nth(c, n))
		n++;
	return n;
}

/* The exporter runs only where there is a database to ship to: a fleet group without a
 * conninfo keeps its records in export/ (docs/FLEET.md). */
int sup_exporters(const struct conf *c)
{
	return c->fleet.enabled && c->fleet.conninfo[0] ? 1 : 0;
}

int sup_down_file(const char *stage, int create)
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
void sup_children_build(unsigned rebuild)
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

void sup_child_start(struct child *ch)
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

void sup_reap(void)
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
void sup_stop(unsigned mask)
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

void sup_start_stage(int si)
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

void sup_signal_stage(int si, int sig)
{
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].si == si && sup_children[i].state == CH_RUNNING)
			sup_child_kill(&sup_children[i], sig);
}

/* ---- readiness --------------------------------------------------------------------- */

int sup_ready_poll(struct pollfd *pfd, size_t *map, size_t max)
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

int sup_ready_read(struct child *ch)
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

static int sup_notified_ready;

void sup_maybe_notify_ready(void)
{
	if (sup_notified_ready)
		return;
	for (size_t i = 0; i < sup_n; i++)
		if (sup_children[i].state == CH_RUNNING && !sup_children[i].ready)
			return;
	sup_notified_ready = 1;
	notify_send("READY=1\nSTATUS=supervising the stages");
}

void sup_stage_defs(const struct conf *c)
{
	int n[N_STAGES] = {c->splitter.instances,  c->runner.instances,     c->router.instances,
	                   sup_connector_count(c), c->lmtp.enabled ? 1 : 0, sup_exporters(c)};
	for (int s = 0; s < N_STAGES; s++) {
		sup_stages[s].instances = n[s];
		sup_stages[s].down = sup_down_exists(sup_stages[s].name);
	}
}

/* As root, before the drop: a keeper for each role that runs as a user other than the one
 * spoold becomes, and the stage binaries opened for them. Nothing when spoold does not
 * drop (not root, or root on purpose): every stage is then spoold's own child. */
void sup_keepers_start(uid_t spool_uid)
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
