/*
 * connector - see connector.h.
 */
#include "connector.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "user.h"
#include "util.h"
#include "version.h"
#include "watch.h"

static volatile sig_atomic_t connector_stop;
static volatile sig_atomic_t connector_paused;

static void connector_on_signal(int sig)
{
	if (sig == SIGUSR1)
		connector_paused = 1; /* spoolctl pause: finish the current entry, take no new */
	else if (sig == SIGUSR2)
		connector_paused = 0;
	else
		connector_stop = 1;
}

/* The config, for the fleet's event records (set by connector_main). */
static const struct conf *connector_conf;

/* The record of a delivery or a bounce, durable before the entry leaves the outbox (the
 * connector's own moves sync directories, not files: EXPORT_SYNC). */
static void connector_export(struct outbox_entry *e, int kind, const char *detail)
{
	if (connector_conf)
		export_event(connector_conf, e->sp, e->fd, e->qid, kind, e->conn, detail,
		             EXPORT_SYNC);
}

/* One entry. Returns 1 when it still waits for a retry, else 0. */
/* The router's uid: the owner every outbox message must have. */
static uid_t connector_router_uid;

static int connector_one(const struct connector *cn, const struct conf_connector *cc,
                         struct spool *sp, int dirfd, const char *qid)
{
	struct outbox_entry e;
	struct outbox_state st;
	struct envelope env;
	char reason[256], reply[512];
	int waiting = 0;
	int r = outbox_entry_claim(sp, dirfd, cc->name, qid, &e);
	if (r <= 0) {
		if (r < 0)
			log_warn(qid, "cannot claim outbox/%s/%s: %s", cc->name, qid,
			         strerror(errno));
		return 0;
	}
	outbox_state_read(&e, &st);
	uint64_t now = (uint64_t)time(NULL);
	if (st.next > now) {
		outbox_entry_release(&e);
		return 1;
	}
	envelope_init(&env);
	int msgfd = -1;
	if (envelope_read_at(e.fd, &env, reason, sizeof reason) < 0 ||
	    (msgfd = openat(e.fd, "message", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		/* Entries appear complete by rename: this one is damaged, not in progress. */
		if (msgfd < 0 && !reason[0])
			snprintf(reason, sizeof reason, "message: %s", strerror(errno));
		log_error(qid, "outbox/%s/%s is damaged (%s): bounced to badmail/", cc->name, qid,
		          reason);
		if (outbox_bounce(&e, reason) < 0)
			log_warn(qid, "cannot bounce: %s", strerror(errno));
		goto out;
	}
	/* Trust by ownership: what leaves is a copy the router made (or, with one user for
	 * every stage, that user's file). A message another stage's user owns was not put
	 * here by the router, whatever the directory says. */
	struct stat ms_st;
	if (fstat(msgfd, &ms_st) < 0 ||
	    (ms_st.st_uid != connector_router_uid && ms_st.st_uid != 0)) {
		snprintf(reason, sizeof reason,
		         "message belongs to uid %ld, not to the router's uid %ld: not delivered",
		         (long)ms_st.st_uid, (long)connector_router_uid);
		log_error(qid, "outbox/%s/%s: %s; moved to badmail/", cc->name, qid, reason);
		if (outbox_bounce(&e, reason) < 0)
			log_warn(qid, "cannot bounce: %s", strerror(errno));
		goto out;
	}
	reply[0] = '\0';
	int64_t t0 = now_ms_monotonic();
	enum conn_result res = cn->deliver(cc, &e, &env, msgfd, reply, sizeof reply);
	long ms = (long)(now_ms_monotonic() - t0);
	struct buf esc;
	buf_init(&esc);
	escape_bytes(&esc, reply, strlen(reply), 400);
	if (res == CONN_OK) {
		trace_add(e.fd, qid, "delivered connector=%s ms=%ld reply=%s", cc->name, ms,
		          buf_cstr(&esc));
		/* The log shows the reply as text (log.c escapes control bytes, spaces stay),
		 * with the next hop's "queued as" ID, so that its log can be joined to ours;
		 * the trace keeps the k=v escaping. */
		log_info(qid, "delivered connector=%s rcpts=%zu ms=%ld reply=\"%s\"", cc->name,
		         env.n_rcpts, ms, reply);
		connector_export(&e, EXPORT_DELIVERED, reply);
		if (outbox_done(&e) < 0)
			log_warn(qid, "delivered, but cannot remove outbox/%s/%s: %s", cc->name,
			         qid, strerror(errno));
		metrics_inc("spoold_messages_total", "outcome=\"delivered\"", 1);
	} else if (res == CONN_PERM || (st.first && now - st.first > (uint64_t)cc->max_age)) {
		const char *why = res == CONN_PERM ? "rejected" : "expired, still failing";
		trace_add(e.fd, qid, "bounce connector=%s why=%s reply=%s", cc->name,
		          res == CONN_PERM ? "rejected" : "expired", buf_cstr(&esc));
		log_warn(qid, "bounced connector=%s (%s): %s", cc->name, why, reply);
		snprintf(reason, sizeof reason, "%s: %s", why, buf_cstr(&esc));
		connector_export(&e, EXPORT_BOUNCED, reason);
		if (outbox_bounce(&e, reason) < 0)
			log_warn(qid, "cannot bounce: %s", strerror(errno));
		metrics_inc("spoold_messages_total", "outcome=\"bounced\"", 1);
	} else {
		if (outbox_defer(&e, &st, cc->retry_min, cc->retry_max, reply) < 0)
			log_warn(qid, "cannot record the deferral: %s", strerror(errno));
		trace_add(e.fd, qid, "deferred connector=%s attempts=%llu reply=%s", cc->name,
		          (unsigned long long)st.attempts, buf_cstr(&esc));
		log_warn(qid, "deferred connector=%s attempts=%llu retry_at=%llu: %s", cc->name,
		         (unsigned long long)st.attempts, (unsigned long long)st.next, reply);
		waiting = 1;
	}
	buf_free(&esc);
out:
	if (msgfd >= 0)
		close(msgfd);
	envelope_free(&env);
	outbox_entry_release(&e);
	return waiting;
}

static int connector_scan(const struct connector *cn, const struct conf_connector *cc,
                          struct spool *sp, int dirfd)
{
	char **names;
	size_t n;
	int waiting = 0;
	if (spool_list(dirfd, 1, &names, &n) < 0) {
		log_warn(NULL, "cannot list outbox/%s: %s", cc->name, strerror(errno));
		return 0;
	}
	for (size_t i = 0; i < n && !connector_stop && !connector_paused; i++)
		waiting += connector_one(cn, cc, sp, dirfd, names[i]);
	spool_names_free(names, n);
	return waiting;
}

int connector_main(const struct connector *cn, int argc, char **argv)
{
	const char *conf_path = "/etc/spoold/spoold.conf", *name = NULL;
	int once = 0;
	log_init(cn->prog);
	trace_set_prog(cn->prog);
	stage_ready_take();
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf_path = argv[++i];
		else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
			name = argv[++i];
		else if (strcmp(argv[i], "--once") == 0)
			once = 1;
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit(cn->prog);
		else
			die_perm(EXIT_USAGE, "usage: %s [-c CONFIG] -n CONNECTOR [--once]",
			         cn->prog);
	}
	if (name == NULL)
		die_perm(EXIT_USAGE, "usage: %s [-c CONFIG] -n CONNECTOR [--once]", cn->prog);
	struct conf *c = conf_load(conf_path);
	connector_conf = c;
	connector_router_uid = conf_role_uid(c, ROLE_ROUTER);
	const struct conf_connector *cc = conf_connector_find(c, name);
	if (cc == NULL)
		die_perm(EXIT_CONFIG, "%s: no connector named '%s'", conf_path, name);
	if (cc->type != cn->type)
		die_perm(EXIT_CONFIG, "%s:%d: connector '%s' is not of the type %s delivers",
		         conf_path, cc->line, name, cn->prog);
	user_root_check(c, cn->prog);
	struct spool sp;
	spool_open(&sp, c->spool_dir, 1);
	int dirfd = spool_outbox_open(&sp, cc->name);
	if (dirfd < 0)
		die_temp(NULL, "cannot open %s/outbox/%s: %s", sp.root, cc->name, strerror(errno));
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = connector_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	const char *ps = getenv("SPOOLD_PAUSED");
	connector_paused = ps && strcmp(ps, "1") == 0;
	signal(SIGPIPE, SIG_IGN);
	srand((unsigned)(getpid() ^ time(NULL)));
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/outbox/%s", sp.root, cc->name);
	if (!once)
		watch_open(dir);
	log_info(NULL, "started, delivering outbox/%s", cc->name);
	stage_ready_notify();
	int64_t next_scan = 0;
	int waiting = 0;
	int was_paused = connector_paused;
	while (!connector_stop) {
		int64_t now = now_ms_monotonic();
		if (was_paused && !connector_paused)
			next_scan = 0; /* resumed: look at what came meanwhile */
		was_paused = connector_paused;
		if (now >= next_scan && !connector_paused) {
			waiting = connector_scan(cn, cc, &sp, dirfd);
			metrics_flush(&sp, cn->prog);
			next_scan = now_ms_monotonic() +
			            (waiting ? 1000 : (int64_t)c->rescan_interval * 1000);
		}
		if (once)
			break;
		char ev[1024];
		int64_t wait = next_scan - now_ms_monotonic();
		if (cn->idle) {
			int iw = cn->idle();
			if (iw >= 0 && iw < wait)
				wait = iw;
		}
		switch (watch_next(wait < 0 ? 0 : (int)wait, ev, sizeof ev)) {
		case WATCH_NAME:
			/* spoolctl flush made every entry due now: look at all of them. */
			if (strcmp(ev, OUTBOX_FLUSH_NAME) == 0) {
				next_scan = 0;
				break;
			}
			if (ev[0] != '.' && spool_qid_valid(ev) && !connector_paused)
				waiting += connector_one(cn, cc, &sp, dirfd, ev);
			if (waiting && next_scan > now_ms_monotonic() + 1000)
				next_scan = now_ms_monotonic() + 1000;
			break;
		case WATCH_RESCAN:
			next_scan = 0;
			break;
		default:
			break;
		}
	}
	log_info(NULL, "stopping");
	close(dirfd);
	spool_close(&sp);
	conf_free(c);
	return 0;
}
