/*
 * router - acts on the verdicts (docs/INTERNALS.md, states S3 -> S4a..S4c).
 *
 * Every part infected by any scanner: quarantine/. Every part clean: one outbox entry per
 * connector that serves a recipient, each with only that connector's recipients. A
 * manifest `unscannable` mark (a splitter limit such as max_parts): quarantine/ at once,
 * reason "unscannable", since a retry rescans the same parts and can never cover more.
 * Anything else (a scanner error, a timeout, a part with no verdict): hold/, retried with
 * exponential back-off, and quarantined after max_hold_time. It fails closed: only a
 * positive, complete set of clean verdicts lets mail out.
 *
 * This file is the stage: claim, trust by ownership, resuming committed work, the
 * dispatch on the decision, and the hold timer; router.h lists the other pieces.
 *
 * DIAGNOSTICS
 *   Exit 75 when the spool is unusable, 78 on a config error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "crash.h"
#include "entry_names.h"
#include "envelope.h"
#include "export.h"
#include "log.h"
#include "metrics.h"
#include "manifest.h"
#include "pool.h"
#include "router.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"
#include "verdict.h"

static void router_infected(struct stage *st, struct spool_entry *e, const struct envelope *env,
                            const struct manifest *m, const struct verdicts *vs, struct buf *why)
{
	enum infected_action action = st->conf->router.infected_action;
	char of[SPOOL_QID_LEN + 1];
	if (action == INFECTED_DISCARD) {
		router_discard(e, env, vs);
		router_notify(st, e->qid, env, vs, "discard", "infected", buf_cstr(why));
		return;
	}
	if (action == INFECTED_STRIP && router_derived(e, of)) {
		/* Stripped once and infected again: never stripped twice (no loop). */
		buf_printf(why, "strip derivative of %s, infected again: not stripped twice\n", of);
		log_warn(e->qid, "strip derivative of %s is infected again, quarantining", of);
	} else if (action == INFECTED_STRIP) {
		struct buf body;
		buf_init(&body);
		if (router_strip(st, e, m, vs, &body, why) == 0) {
			char qid[SPOOL_QID_LEN + 1];
			memcpy(qid, e->qid, sizeof qid);
			log_warn(qid, "stripped infected parts, scanning the rest again: %s",
			         buf_cstr(why));
			router_strip_commit(e, env, m, vs, &body, why);
			buf_free(&body);
			router_notify(st, qid, env, vs, "strip", "infected", buf_cstr(why));
			return;
		}
		buf_free(&body);
		log_warn(e->qid, "cannot strip, quarantining instead");
	}
	char qid[SPOOL_QID_LEN + 1];
	memcpy(qid, e->qid, sizeof qid);
	router_quarantine(e, env, m, vs, buf_cstr(why), "infected");
	router_notify(st, qid, env, vs, "quarantine", "infected", buf_cstr(why));
}

/*
 * Trust by ownership (docs/SECURITY.md): a control file counts only when it belongs to the
 * user of the stage that writes it, or to root. In a separated spool every stage user may
 * write in every work directory (they move them on), so a file with another owner may
 * have been forged by a compromised stage: it is "not written". It is renamed aside
 * (untrusted.<name>, kept for the administrator) and the message is held: a retry scans
 * it again and routes it by files that are what they claim. With one user for all, every
 * file is that user's and nothing changes.
 */
static const struct {
	const char *name;
	enum conf_role role;
} router_control_files[] = {
    {ENTRY_MANIFEST, ROLE_SPLITTER}, {ENTRY_VERDICTS, ROLE_RUNNER}, {ENTRY_FANOUT, ROLE_ROUTER},
    {ENTRY_STRIP, ROLE_ROUTER},      {ENTRY_REPORT, ROLE_ROUTER},   {ENTRY_RELEASE, ROLE_SPOOL},
};

static int router_untrusted(struct stage *st, struct spool_entry *e, struct buf *why)
{
	int bad = 0;
	for (size_t i = 0; i < ARRAY_LEN(router_control_files); i++) {
		const char *name = router_control_files[i].name;
		uid_t want = conf_role_uid(st->conf, router_control_files[i].role);
		struct stat sb;
		if (fstatat(e->fd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISREG(sb.st_mode) && (sb.st_uid == want || sb.st_uid == 0))
			continue;
		buf_printf(why,
		           "%s belongs to uid %ld, not to uid %ld of the %s that writes it: "
		           "treated as not written\n",
		           name, (long)sb.st_uid, (long)want,
		           conf_role_name(router_control_files[i].role));
		char aside[64];
		snprintf(aside, sizeof aside, "untrusted.%s", name);
		/* Aside, not removed: it is evidence. The rename replaces an older one. */
		if (renameat(e->fd, name, e->fd, aside) < 0 && errno != ENOENT)
			die_temp(e->qid, "cannot set aside %s/route/%s/%s: %s", e->sp->root, e->qid,
			         name, strerror(errno));
		bad++;
	}
	return bad;
}

/* A release counts only when the administrator's (root or the spool's user) and the entry
 * is one the router quarantined (its report is the router's): a compromised stage can
 * neither release a message nor make one look quarantined and wait for a release. */
static int router_released(struct stage *st, struct spool_entry *e)
{
	struct stat rs, qs;
	if (fstatat(e->fd, ENTRY_RELEASE, &rs, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	uid_t admin = conf_role_uid(st->conf, ROLE_SPOOL);
	uid_t router = conf_role_uid(st->conf, ROLE_ROUTER);
	return S_ISREG(rs.st_mode) && (rs.st_uid == admin || rs.st_uid == 0) &&
	       fstatat(e->fd, ENTRY_REPORT, &qs, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(qs.st_mode) &&
	       (qs.st_uid == router || qs.st_uid == 0);
}

/* What a previous claim left committed, or control files to distrust. Returns 1 when the
 * entry was dealt with here. */
static int router_resume(struct stage *st, struct spool_entry *e)
{
	struct stat sb;
	struct buf forged;
	buf_init(&forged);
	if (router_untrusted(st, e, &forged) > 0) {
		log_warn(e->qid,
		         "control files not written by their stage: %s; the message is held",
		         buf_cstr(&forged));
		trace_add(e->fd, e->qid, "untrusted files set aside");
		router_drop_outs(e);
		router_hold(st, e, buf_cstr(&forged));
		buf_free(&forged);
		return 1;
	}
	buf_free(&forged);
	if (fstatat(e->fd, ENTRY_FANOUT, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
		log_info(e->qid, "resuming an interrupted fan-out");
		router_fanout_finish(e);
		return 1;
	}
	/* A committed strip is finished, never redone - unless the entry is a stripped
	 * original that spoolctl released from quarantine (its plan is done: the release
	 * decides). */
	if (fstatat(e->fd, ENTRY_STRIP, &sb, AT_SYMLINK_NOFOLLOW) == 0 && !router_released(st, e)) {
		log_info(e->qid, "resuming an interrupted strip");
		router_strip_finish(e);
		return 1;
	}
	return 0;
}

/* A quarantine entry that spoolctl released: delivered as it was received, without a
 * rescan and without looking at its verdicts (the administrator decided). */
static void router_release_deliver(struct stage *st, struct spool_entry *e, struct envelope *env,
                                   struct buf *why)
{
	char reason[512];
	if (envelope_read_at(e->fd, env, reason, sizeof reason) < 0) {
		buf_addstr(why, "released, but ");
		router_text(why, reason, sizeof reason);
		buf_addstr(why, "\n");
		router_hold(st, e, buf_cstr(why));
		return;
	}
	trace_add(e->fd, e->qid, "release deliver");
	log_info(e->qid, "delivering a message released from quarantine");
	/* As received, but never with a sender's own scan headers, and without ours: the
	 * administrator released it, no scanner passed it. */
	router_deliver_scanned(st, e, env, NULL, NULL, NULL);
}

/* Read the manifest, the verdicts and the envelope, each from its writer, and decide. A
 * file that cannot be read, or verdicts that are not this message's, hold. */
static enum outcome router_judge(struct stage *st, struct spool_entry *e, struct manifest *m,
                                 struct verdicts *vs, struct envelope *env, struct buf *why)
{
	char reason[512];
	if (manifest_read_owned_at(e->fd, m, conf_role_uid(st->conf, ROLE_SPLITTER), reason,
	                           sizeof reason) < 0 ||
	    verdicts_read_owned_at(e->fd, vs, conf_role_uid(st->conf, ROLE_RUNNER), reason,
	                           sizeof reason) < 0 ||
	    envelope_read_at(e->fd, env, reason, sizeof reason) < 0) {
		router_text(why, reason, sizeof reason);
		buf_addstr(why, "\n");
		return OUT_HOLD;
	}
	if (st->conf->separated && vs->msg_sha256 == NULL && vs->qid &&
	    strcmp(vs->qid, e->qid) != 0) {
		/* Verdicts moved in from another message: they say nothing about this one. Only
		 * where another stage's user could have moved them (one user can forge them
		 * anyway), and only without the message's hash, which binds them better: a
		 * commit rename that met a taken name gives the entry a fresh queue ID after
		 * its verdicts were written, and the hash survives that; the qid does not. */
		buf_addstr(why, "verdicts are for another message (");
		router_text(why, vs->qid, strlen(vs->qid));
		buf_addstr(why, ")\n");
		return OUT_HOLD;
	}
	if (vs->qid == NULL && vs->msg_sha256 == NULL && st->conf->separated) {
		buf_addstr(why, "verdicts do not name the message they are for\n");
		return OUT_HOLD;
	}
	enum outcome o = router_decide(m, vs, why);
	/* A banned name needs no scanner: it is quarantined even while a scan failed. */
	if (o != OUT_QUARANTINE) {
		struct buf bw;
		buf_init(&bw);
		if (router_banned(&st->conf->router, m, &bw, NULL) > 0) {
			o = OUT_BANNED;
			buf_reset(why);
			buf_add(why, bw.data, bw.len);
		}
		buf_free(&bw);
	}
	return o;
}

/* Not scanned clean: held again, or past max_hold_time quarantined (or delivered
 * unscanned, with hold_expiry_action = deliver). */
static void router_not_clean(struct stage *st, struct spool_entry *e, const struct envelope *env,
                             const struct manifest *m, const struct verdicts *vs, struct buf *why)
{
	struct hold_state h;
	const struct conf_router *rc = &st->conf->router;
	hold_read(e->fd, &h);
	if (!hold_expired(&h, (int64_t)time(NULL), rc->max_hold_time)) {
		router_hold(st, e, buf_cstr(why));
		return;
	}
	if (rc->hold_expiry_action == HOLD_EXPIRY_DELIVER && env->n_rcpts > 0) {
		char hdr[256];
		snprintf(hdr, sizeof hdr,
		         "X-Virus-Scan-Warning: NOT SCANNED: delivered unscanned after %d "
		         "seconds on hold (hold_expiry_action = deliver)",
		         rc->max_hold_time);
		trace_add(e->fd, e->qid, "hold-expired deliver-unscanned");
		log_warn(e->qid, "delivering UNSCANNED after max_hold_time: %s", buf_cstr(why));
		/* NULL verdicts: unscanned mail never says X-Virus-Scanned. */
		router_deliver_scanned(st, e, env, NULL, hdr, NULL);
	} else {
		router_quarantine(e, env, m, vs, buf_cstr(why), "held-too-long");
	}
}

/* Carry out the decision. */
static void router_act(struct stage *st, struct spool_entry *e, enum outcome o,
                       const struct envelope *env, const struct manifest *m,
                       const struct verdicts *vs, struct buf *why)
{
	char of[SPOOL_QID_LEN + 1], q[SPOOL_QID_LEN + 1];
	memcpy(q, e->qid, sizeof q);
	if (o == OUT_HOLD && st->conf->router.infected_action == INFECTED_STRIP &&
	    router_derived(e, of)) {
		/* A stripped message is delivered only on a clean scan of its own: anything
		 * less and the original's verdict stands. */
		buf_printf(why, "strip derivative of %s, not scanned clean\n", of);
		router_quarantine(e, env, m, vs, buf_cstr(why), "strip-not-clean");
		router_notify(st, q, env, vs, "quarantine", "strip-not-clean", buf_cstr(why));
	} else if (o == OUT_QUARANTINE) {
		router_infected(st, e, env, m, vs, why);
	} else if (o == OUT_BANNED) {
		router_quarantine(e, env, m, vs, buf_cstr(why), "banned");
		router_notify(st, q, env, vs, "quarantine", "banned", buf_cstr(why));
	} else if (o == OUT_UNSCANNABLE) {
		/* Never delivered, not even with hold_expiry_action = deliver: that is for a
		 * scan that might have worked later, and this one never can. */
		router_quarantine(e, env, m, vs, buf_cstr(why), "unscannable");
	} else if (o == OUT_HOLD) {
		router_not_clean(st, e, env, m, vs, why);
	} else {
		router_deliver_scanned(st, e, env, vs, NULL, NULL);
	}
}

const struct conf *router_conf;

static int router_handle(struct stage *st, const char *qid)
{
	router_conf = st->conf;
	struct spool_entry e;
	struct manifest m;
	struct verdicts vs;
	struct envelope env;
	struct buf why;
	int r = spool_entry_claim_rw(&st->spool, SD_ROUTE, qid, &e);
	if (r <= 0)
		return r == 0 && errno == EWOULDBLOCK ? -1 : 0;
	if (router_resume(st, &e)) {
		spool_entry_release(&e);
		return 1;
	}
	router_drop_outs(&e);
	manifest_init(&m);
	verdicts_init(&vs);
	envelope_init(&env);
	buf_init(&why);
	if (router_released(st, &e)) {
		router_release_deliver(st, &e, &env, &why);
	} else {
		enum outcome o = router_judge(st, &e, &m, &vs, &env, &why);
		CRASH_POINT("route-claimed");
		router_act(st, &e, o, &env, &m, &vs, &why);
	}
	buf_free(&why);
	manifest_free(&m);
	verdicts_free(&vs);
	envelope_free(&env);
	spool_entry_release(&e);
	return 1;
}

/* Retry held messages whose time has come: back to scan/ for a fresh scan. Expire the
 * quarantine every expire_interval. */
static int router_tick(struct stage *st)
{
	static int64_t next_expire;
	char **names;
	size_t n;
	int64_t now = (int64_t)time(NULL);
	/* The furthest ahead a schedule written by router_hold can be: the longest back-off
	 * plus its jitter, and a minute of slack. */
	const struct conf_router *rc = &st->conf->router;
	int64_t horizon = (int64_t)rc->hold_retry_max + rc->hold_retry_max / 4 + 60;
	if (now_ms_monotonic() >= next_expire) {
		export_use(st->conf);
		if (spool_quarantine_expire(&st->spool, st->conf->router.quarantine_days) < 0)
			log_warn(NULL, "cannot list %s/quarantine: %s", st->spool.root,
			         strerror(errno));
		next_expire = now_ms_monotonic() + (int64_t)st->conf->router.expire_interval * 1000;
	}
	/* A scanner that passed its canary again (run/recovered.<scanner>, newer than the
	 * last one seen): the mail its errors held is retried now, not after its back-off. */
	static int64_t seen_recovery;
	int64_t newest = 0;
	for (size_t s = 0; s < st->conf->n_scanners; s++) {
		int64_t at = pool_recovered_at(st->spool.fd[SD_RUN], st->conf->scanners[s].name);
		newest = at > newest ? at : newest;
	}
	int recovery = newest > seen_recovery;
	if (spool_list(st->spool.fd[SD_HOLD], 1, &names, &n) < 0)
		return -1;
	for (size_t i = 0; i < n && !stage_stopping(); i++) {
		struct spool_entry e;
		struct hold_state h;
		int recovered = 0;
		if (spool_entry_claim_rw(&st->spool, SD_HOLD, names[i], &e) != 1)
			continue;
		hold_read(e.fd, &h);
		for (size_t s = 0; recovery && !h.manual && !recovered && s < st->conf->n_scanners;
		     s++) {
			const char *sn = st->conf->scanners[s].name;
			recovered =
			    hold_held_for(e.fd, sn, pool_recovered_at(st->spool.fd[SD_RUN], sn));
		}
		if (recovered)
			log_info(e.qid, "a scanner that held it recovered; retrying now");
		if (recovered || hold_due(&h, now, horizon)) {
			trace_add(e.fd, e.qid, "retry attempts=%llu",
			          (unsigned long long)h.attempts);
			if (spool_entry_move(&e, SD_SCAN) < 0)
				log_warn(e.qid, "cannot move hold/%s back to scan/: %s", e.qid,
				         strerror(errno));
			else
				log_info(e.qid, "retrying held message attempts=%llu",
				         (unsigned long long)h.attempts);
		}
		spool_entry_release(&e);
	}
	spool_names_free(names, n);
	if (recovery && !stage_stopping())
		seen_recovery = newest;
	return -1;
}

int main(int argc, char **argv)
{
	struct stage st = {
	    .name = "router",
	    .watch_dir = SD_ROUTE,
	    .handle = router_handle,
	    .tick = router_tick,
	    .tick_ms = 1000,
	};
	return stage_main(&st, argc, argv);
}
