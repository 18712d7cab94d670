/*
 * connector - see connector.h.
 */
#include "connector.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "entry_names.h"
#include "export.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"

/* The program's connector and its configuration: one per process. */
static const struct connector *connector_cn;
static const struct conf_connector *connector_cc;

/* The config, for the fleet's event records (set by connector_init). */
static const struct conf *connector_conf;

/* The record of a delivery or a bounce, durable before the entry leaves the outbox (the
 * connector's own moves sync directories, not files: EXPORT_SYNC). Its key has the pass of
 * the outbox entry's `requeues`, which the router copied from the work directory
 * (export_pass_copy), so that it is the formula of every other record of the pass. */
static void connector_export(struct outbox_entry *e, int kind, const char *detail)
{
	if (connector_conf)
		export_event(connector_conf, e->sp, e->fd, e->qid, kind, e->conn, detail,
		             EXPORT_SYNC);
}

/* The router's uid: the owner every outbox message must have. */
static uid_t connector_router_uid;

/* The time (monotonic ms from now) until a retry time in wall-clock seconds. */
static int64_t connector_ms_until(uint64_t when)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t ms = ((int64_t)when - (int64_t)now.tv_sec) * 1000 - now.tv_nsec / 1000000;
	return ms < 0 ? 0 : ms;
}

/* One entry (the stage's handle). An entry waiting for its retry time is looked at again
 * when it comes (stage_look_again); a locked one (another instance delivers it, spoolctl
 * works on it) is busy, -1, and retried shortly by the stage. */
static int connector_one(struct stage *stg, const char *qid)
{
	const struct connector *cn = connector_cn;
	const struct conf_connector *cc = connector_cc;
	struct spool *sp = &stg->spool;
	int dirfd = stg->dir_fd;
	struct outbox_entry e;
	struct outbox_state st;
	struct envelope env;
	char reason[256], reply[512];
	int did = 1;
	if (!spool_qid_valid(qid))
		return 0;
	int r = outbox_entry_claim(sp, dirfd, cc->name, qid, &e);
	if (r <= 0) {
		if (r < 0)
			log_warn(qid, "cannot claim outbox/%s/%s: %s", cc->name, qid,
			         strerror(errno));
		return r == 0 && errno == EWOULDBLOCK ? -1 : 0;
	}
	outbox_state_read(&e, &st);
	uint64_t now = (uint64_t)time(NULL);
	if (st.next > now) {
		outbox_entry_release(&e);
		stage_look_again(stg, qid, connector_ms_until(st.next));
		return 0;
	}
	envelope_init(&env);
	int msgfd = -1;
	if (envelope_read_at(e.fd, &env, reason, sizeof reason) < 0 ||
	    (msgfd = openat(e.fd, ENTRY_MESSAGE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
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
		stage_look_again(stg, qid, connector_ms_until(st.next));
	}
	buf_free(&esc);
out:
	if (msgfd >= 0)
		close(msgfd);
	envelope_free(&env);
	outbox_entry_release(&e);
	return did;
}

/* The stage's init hook: which connector this process is, and its outbox directory. */
static void connector_init(struct stage *stg)
{
	static char dir_name[512];
	connector_router_uid = conf_role_uid(stg->conf, ROLE_ROUTER);
	connector_conf = stg->conf;
	connector_cc = conf_connector_find(stg->conf, stg->instance);
	if (connector_cc == NULL)
		die_perm(EXIT_CONFIG, "%s: no connector named '%s'", stg->conf_path, stg->instance);
	if (connector_cc->type != connector_cn->type)
		die_perm(EXIT_CONFIG, "%s:%d: connector '%s' is not of the type %s delivers",
		         stg->conf_path, connector_cc->line, stg->instance, connector_cn->prog);
	if (bsnprintf(dir_name, sizeof dir_name, "outbox/%s", connector_cc->name) < 0)
		die_perm(EXIT_CONFIG, "%s:%d: connector name too long", stg->conf_path,
		         connector_cc->line);
	stg->dir_fd = spool_outbox_open(&stg->spool, connector_cc->name);
	if (stg->dir_fd < 0)
		die_temp(NULL, "cannot open %s/%s: %s", stg->spool.root, dir_name, strerror(errno));
	stg->dir_name = dir_name;
}

/* While the loop waits: the program's idle hook (connector-smtp closes an idle
 * connection), which says when it wants to be called again. */
static int connector_tick(struct stage *stg)
{
	(void)stg;
	return connector_cn->idle ? connector_cn->idle() : -1;
}

int connector_main(const struct connector *cn, int argc, char **argv)
{
	struct stage st = {
	    .name = cn->prog,
	    .watch_dir = SD_OUTBOX,
	    .init = connector_init,
	    .handle = connector_one,
	    .tick = cn->idle ? connector_tick : NULL,
	    .tick_ms = 1000,
	    .rescan_name = OUTBOX_FLUSH_NAME,
	    .work_when_full = 1,
	    .needs_instance = 1,
	};
	connector_cn = cn;
	return stage_main(&st, argc, argv);
}
