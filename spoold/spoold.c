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
#include "children.h"
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

char sup_bindir[PATH_MAX];
const char *sup_conf_path;
struct conf *sup_conf;
struct spool sup_spool;
sigset_t sup_oldmask;

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

/* ---- reload ------------------------------------------------------------------------ */

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
	/* Sized by the children there are now (a reload may add some): every readiness
	 * descriptor is polled, none is left out by a fixed cap. */
	static struct pollfd *pfd;
	static size_t *map, cap;
	if (sup_n + 1 > cap) {
		cap = sup_n + 1;
		pfd = xrealloc(pfd, (2 + CTL_MAX + cap + ROLE__COUNT) * sizeof *pfd);
		map = xrealloc(map, cap * sizeof *map);
	}
	pfd[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
	pfd[1] = (struct pollfd){.fd = cfd, .events = POLLIN};
	for (int i = 0; i < CTL_MAX; i++)
		pfd[2 + i] = (struct pollfd){.fd = sup_ctl[i].fd, .events = POLLIN};
	int nr = sup_ready_poll(pfd + 2 + CTL_MAX, map, cap);
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
