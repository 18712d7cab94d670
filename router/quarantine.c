/*
 * quarantine - the router's moves that do not deliver: quarantine/ with its report
 * (S4b), hold/ with its retry record (S4c), and discard through trash/ (S4e). Each writes
 * what the state needs, syncs, passes its crash point and moves the entry by one rename
 * (docs/INTERNALS.md). An I/O failure exits temp (75): the entry stays in route/ and is
 * redone by the next router.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crash.h"
#include "entry_names.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "trace.h"
#include "util.h"

/* Remove the .ATT parts: quarantine keeps the original message, not its pieces. */
static void router_drop_parts(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(names[i]), sl = strlen(ENTRY_PART_SUFFIX);
		if (l > sl && strcmp(names[i] + l - sl, ENTRY_PART_SUFFIX) == 0)
			unlinkat(e->fd, names[i], 0);
	}
	spool_names_free(names, n);
}

/* One part that no scanner saw in full, as a report line and a report.json object (j
 * gets a leading comma unless it is the first). scanner and why are scanner-chosen
 * bytes: escaped like the virus names. */
static void router_report_unscanned_add(struct buf *r, struct buf *j, int part, const char *label,
                                        const char *scanner, const char *why)
{
	buf_printf(r, "  part %d (%s): not scanned (", part, label);
	router_text(r, scanner, 64);
	buf_addstr(r, ": ");
	router_text(r, why, 1024);
	buf_addstr(r, ")\n");
	buf_printf(j, "%s{\"part\":%d,\"scanner\":\"", j->len ? "," : "", part);
	json_escape(j, scanner, strlen(scanner));
	buf_addstr(j, "\",\"why\":\"");
	json_escape(j, why, strlen(why));
	buf_addstr(j, "\"}");
}

/* The parts no scanner saw in full: neither infected nor clean by router_part_verdict (a
 * clamd pass that skipped the raw part once a decoded part was infected, a scanner error,
 * a timeout, no line at all). A quarantined message can be released, and a release
 * delivers the message as received without looking at the verdicts, so whoever decides
 * on a release must be told what was never scanned: an infected attachment says nothing
 * about the rest of the message. r gets a report section (nothing when every part was
 * scanned), j the objects of report.json's not_scanned array: one per non-clean line of
 * such a part, or one "no verdict" for a part without any. */
static void router_report_unscanned(struct buf *r, struct buf *j, const struct manifest *m,
                                    const struct verdicts *vs)
{
	for (size_t i = 0; i < m->n_parts; i++) {
		const struct manifest_part *p = &m->parts[i];
		int part = (int)p->index, listed = 0;
		if (router_part_verdict(vs, part) != V_ERROR)
			continue;
		if (!r->len)
			buf_addstr(r, "\nNot scanned in full (a release delivers the message as "
			              "received, these parts unscanned):\n");
		struct buf fn;
		buf_init(&fn);
		router_part_label(p, &fn);
		for (size_t k = 0; k < vs->n; k++) {
			const struct verdict_line *l = &vs->lines[k];
			if (l->part != part || l->verdict == V_CLEAN)
				continue;
			router_report_unscanned_add(r, j, part, buf_cstr(&fn), l->scanner,
			                            l->output[0] ? l->output
			                                         : verdict_name(l->verdict));
			listed = 1;
		}
		if (!listed)
			router_report_unscanned_add(r, j, part, buf_cstr(&fn), "-", "no verdict");
		buf_free(&fn);
	}
}

/* Write report and report.json (with derived, the queue ID of the strip derivative, or
 * NULL) and drop the parts; durable after the next sync. */
void router_quarantine_report(struct spool_entry *e, const struct envelope *env,
                              const struct manifest *m, const struct verdicts *vs, const char *why,
                              const char *reason, const char *derived)
{
	struct buf r, j;
	buf_init(&r);
	buf_init(&j);
	/* Everything from the mail or a scanner is escaped (router_text): a report is read
	 * in terminals and by scripts, so it never holds a control byte from outside. */
	buf_printf(&r, "Queue ID: %s\nReason: %s\nSender: ", e->qid, reason);
	router_text(&r, env->sender, 998);
	buf_addstr(&r, "\nRecipients:");
	for (size_t i = 0; i < env->n_rcpts; i++) {
		buf_addstr(&r, " ");
		router_text(&r, env->rcpts[i], 998);
	}
	buf_addstr(&r, "\n\n");
	router_text_block(&r, why);
	struct buf ns, nj;
	buf_init(&ns);
	buf_init(&nj);
	router_report_unscanned(&ns, &nj, m, vs);
	buf_add(&r, ns.data, ns.len);
	buf_addstr(&r, "\nParts:\n");
	for (size_t i = 0; i < m->n_parts; i++) {
		struct buf fn;
		buf_init(&fn);
		escape_bytes(&fn, m->parts[i].filename, strlen(m->parts[i].filename), 256);
		buf_printf(&r, "  %04u ", m->parts[i].index);
		router_text(&r, m->parts[i].path, 256);
		buf_addstr(&r, " ");
		router_text(&r, m->parts[i].type, 256);
		buf_printf(&r, " %s size=%llu\n", fn.len ? buf_cstr(&fn) : "-",
		           (unsigned long long)m->parts[i].size);
		buf_free(&fn);
	}
	/* Machine-readable: one JSON object. Strings are escaped so any byte is safe. */
	buf_printf(&j, "{\"qid\":\"%s\",\"reason\":\"%s\",\"time\":%lld,\"viruses\":[", e->qid,
	           reason, (long long)time(NULL));
	int first = 1;
	for (size_t i = 0; i < vs->n; i++) {
		if (vs->lines[i].verdict != V_INFECTED)
			continue;
		buf_printf(&j, "%s{\"part\":%d,\"scanner\":\"", first ? "" : ",",
		           vs->lines[i].part);
		json_escape(&j, vs->lines[i].scanner, strlen(vs->lines[i].scanner));
		buf_addstr(&j, "\",\"virus\":\"");
		json_escape(&j, vs->lines[i].virus, strlen(vs->lines[i].virus));
		buf_addstr(&j, "\"}");
		first = 0;
	}
	/* The splitter's marks, for a program that wants to know which limit it was. */
	buf_addstr(&j, "],\"unscannable\":[");
	for (size_t i = 0; i < m->n_unscannable; i++) {
		buf_printf(&j, "%s\"", i ? "," : "");
		json_escape(&j, m->unscannable[i], strlen(m->unscannable[i]));
		buf_addstr(&j, "\"");
	}
	buf_addstr(&j, "],\"not_scanned\":[");
	buf_add(&j, nj.data, nj.len);
	buf_addstr(&j, "]");
	if (derived)
		buf_printf(&j, ",\"stripped\":\"%s\"", derived); /* a queue ID: [0-9a-f-] */
	buf_addstr(&j, "}\n");
	router_drop_parts(e);
	if (spool_entry_write(e, ENTRY_REPORT, r.data, r.len) < 0 ||
	    spool_entry_write(e, ENTRY_REPORT_JSON, j.data, j.len) < 0)
		die_temp(e->qid, "cannot write the quarantine report: %s", strerror(errno));
	buf_free(&r);
	buf_free(&j);
	buf_free(&ns);
	buf_free(&nj);
}

void router_quarantine_move(struct spool_entry *e, const char *reason)
{
	/* Every way into quarantine/ passes here: the record is synced by the move. */
	export_entry(router_conf, e, EXPORT_QUARANTINE, reason);
	if (spool_entry_move(e, SD_QUARANTINE) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to quarantine/: %s", e->sp->root, e->qid,
		         strerror(errno));
	log_info(e->qid, "quarantined reason=%s", reason);
	metrics_inc("spoold_messages_total", "outcome=\"quarantined\"", 1);
}

void router_quarantine(struct spool_entry *e, const struct envelope *env, const struct manifest *m,
                       const struct verdicts *vs, const char *why, const char *reason)
{
	router_quarantine_report(e, env, m, vs, why, reason, NULL);
	if (spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write the quarantine report: %s", strerror(errno));
	trace_add(e->fd, e->qid, "quarantine reason=%s", reason);
	CRASH_POINT("route-quarantine");
	router_quarantine_move(e, reason);
}

void router_hold(struct stage *st, struct spool_entry *e, const char *why)
{
	const struct conf_router *rc = &st->conf->router;
	struct hold_state h;
	hold_read(e->fd, &h);
	int64_t delay = hold_schedule(&h, (int64_t)time(NULL), rc->hold_retry_min,
	                              rc->hold_retry_max, (unsigned)rand());
	struct buf b;
	buf_init(&b);
	hold_format(&h, &b);
	struct buf w, rs;
	buf_init(&w);
	buf_init(&rs);
	escape_bytes(&w, why, strlen(why), 1024);
	router_text_block(&rs, why);
	export_entry(st->conf, e, EXPORT_HOLD, why); /* before the new hold round is written */
	if (spool_entry_write(e, ENTRY_HOLD, b.data, b.len) < 0 ||
	    spool_entry_write(e, ENTRY_REASON, rs.data, rs.len) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write hold state: %s", strerror(errno));
	trace_add(e->fd, e->qid, "hold attempts=%llu next=%lld why=%s",
	          (unsigned long long)h.attempts, (long long)h.next, buf_cstr(&w));
	CRASH_POINT("route-hold");
	if (spool_entry_move(e, SD_HOLD) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to hold/: %s", e->sp->root, e->qid,
		         strerror(errno));
	/* The log reads as text: spaces stay, a line break becomes \x0a (the trace keeps the
	 * k=v escaping). */
	struct buf wl;
	buf_init(&wl);
	text_escape(&wl, why, strlen(why), 1024);
	log_warn(e->qid, "held attempts=%llu retry_in=%llds why=\"%s\"",
	         (unsigned long long)h.attempts, (long long)delay, buf_cstr(&wl));
	metrics_inc("spoold_messages_total", "outcome=\"held\"", 1);
	buf_free(&wl);
	buf_free(&b);
	buf_free(&w);
	buf_free(&rs);
}

/* discard: the message ends nowhere, through trash/ (never half-deleted in route/), with
 * one log line that keeps the envelope and the virus names: amavisd-new's D_DISCARD. */
void router_discard(struct spool_entry *e, const struct envelope *env, const struct verdicts *vs)
{
	struct buf v, s;
	buf_init(&v);
	buf_init(&s);
	router_viruses(vs, &v);
	escape_bytes(&s, env->sender, strlen(env->sender), 998);
	trace_add(e->fd, e->qid, "discard viruses=%s", buf_cstr(&v));
	export_entry(router_conf, e, EXPORT_DISCARD, buf_cstr(&v)); /* synced by the trash move */
	CRASH_POINT("route-discard");
	if (spool_entry_trash(e) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to trash/: %s", e->sp->root, e->qid,
		         strerror(errno));
	log_warn(e->qid, "discarded infected message sender=%s rcpts=%zu viruses=%s",
	         s.len ? buf_cstr(&s) : "<>", env->n_rcpts, buf_cstr(&v));
	metrics_inc("spoold_messages_total", "outcome=\"discarded\"", 1);
	buf_free(&v);
	buf_free(&s);
}
