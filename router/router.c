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
 * DIAGNOSTICS
 *   Exit 75 when the spool is unusable, 78 on a config error.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <ctype.h>

#include "conf.h"
#include "crash.h"
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

enum outcome { OUT_DELIVER, OUT_QUARANTINE, OUT_HOLD, OUT_BANNED, OUT_UNSCANNABLE };

/* Bytes a scanner or a sender chose, as one line of text for people: printable ASCII
 * and the space pass, a backslash and every other byte (CR, LF, ESC, 8-bit) become \xHH,
 * so a report, a reason file or a notice never holds a control byte or a line break that
 * came from outside. At most maxin input bytes; a longer input is cut and ends in "...". */
static void router_text(struct buf *out, const char *s, size_t maxin)
{
	text_escape(out, s, strlen(s), maxin);
}

/* A multi-line text (a why) for a report, a reason file or a notice body: like
 * router_text, but its line breaks stay. The router's own lines escape what they quote at
 * the source; this catches any line that did not, so no sink ever holds a CR, an ESC or
 * another control byte, whoever wrote the line. */
static void router_text_block(struct buf *out, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 0x20 && c < 0x7f) || c == '\n')
			buf_add(out, &c, 1);
		else
			buf_printf(out, "\\x%02x", c);
	}
}

/* The verdict for one part: infected if any scanner says so; clean if every primary
 * said clean, or if a primary failed and the backups all gave a verdict; else error. */
static enum verdict router_part_verdict(const struct verdicts *vs, int part)
{
	int n_primary = 0, primary_err = 0, n_backup = 0, backup_err = 0;
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->part != part)
			continue;
		if (l->verdict == V_INFECTED)
			return V_INFECTED;
		if (l->backup) {
			n_backup++;
			backup_err += l->verdict != V_CLEAN;
		} else {
			n_primary++;
			primary_err += l->verdict != V_CLEAN;
		}
	}
	if (n_primary > 0 && primary_err == 0)
		return V_CLEAN;
	if (primary_err > 0 && n_backup > 0 && backup_err == 0)
		return V_CLEAN;
	return V_ERROR;
}

static enum outcome router_decide(const struct manifest *m, const struct verdicts *vs,
                                  struct buf *why)
{
	int infected = 0, failed = 0;
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->verdict == V_INFECTED) {
			infected = 1;
			const struct manifest_part *p = l->part > 0 && (size_t)l->part <= m->n_parts
			                                    ? &m->parts[l->part - 1]
			                                    : NULL;
			struct buf fn;
			buf_init(&fn);
			if (p && p->filename[0])
				escape_bytes(&fn, p->filename, strlen(p->filename), 256);
			else if (p)
				buf_printf(&fn, "%s, no filename", manifest_found_name(p->found));
			else
				buf_addstr(&fn, "-");
			buf_printf(why, "part %d (%s): ", l->part, buf_cstr(&fn));
			router_text(why, l->virus, 256);
			buf_addstr(why, " found by ");
			router_text(why, l->scanner, 64);
			buf_addstr(why, "\n");
			buf_free(&fn);
		}
		if (l->part < 0 && l->verdict != V_CLEAN) {
			failed = 1;
			if (m->n_unscannable && l->verdict == V_UNSCANNABLE &&
			    strcmp(l->scanner, "splitter") == 0)
				continue; /* a manifest mark: listed from the manifest below */
			buf_printf(why, "message: %s by ", verdict_name(l->verdict));
			router_text(why, l->scanner, 64);
			buf_addstr(why, ": ");
			router_text(why, l->output, 1024);
			buf_addstr(why, "\n");
		}
	}
	if (infected)
		return OUT_QUARANTINE;
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict v = router_part_verdict(vs, (int)m->parts[i].index);
		if (v != V_CLEAN) {
			failed = 1;
			buf_printf(why,
			           "part %u: not scanned clean (scanner error, timeout or no "
			           "verdict)\n",
			           m->parts[i].index);
		}
	}
	/* A manifest's unscannable marks are permanent: a retry goes from hold/ back to
	 * scan/, never to the splitter, so it rescans the same parts of the same manifest and
	 * can never cover what the splitter left out. Holding such a message would only
	 * rescan all its parts until max_hold_time: it is quarantined now, and the report
	 * names the limits first. */
	if (m->n_unscannable) {
		struct buf u;
		buf_init(&u);
		for (size_t i = 0; i < m->n_unscannable; i++) {
			buf_addstr(&u,
			           "message: unscannable, not retried (a retry rescans the same "
			           "parts): ");
			router_text(&u, m->unscannable[i], 256);
			buf_addstr(&u, "\n");
		}
		buf_add(&u, why->data, why->len);
		buf_reset(why);
		buf_add(why, u.data, u.len);
		buf_free(&u);
		return OUT_UNSCANNABLE;
	}
	return failed ? OUT_HOLD : OUT_DELIVER;
}

/* The connector for one recipient: the first whose domain patterns match, else default. */
static const char *router_connector_for(const struct conf *c, const char *rcpt)
{
	char dom[512];
	envelope_addr_domain(rcpt, dom, sizeof dom);
	for (size_t i = 0; i < c->n_connectors; i++)
		for (char **p = c->connectors[i].domains; *p; p++)
			if (fnmatch(*p, dom, FNM_CASEFOLD) == 0)
				return c->connectors[i].name;
	return c->router.default_connector;
}

/* Remove the .ATT parts: quarantine keeps the original message, not its pieces. */
static void router_drop_parts(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(names[i]);
		if (l > 4 && strcmp(names[i] + l - 4, ".ATT") == 0)
			unlinkat(e->fd, names[i], 0);
	}
	spool_names_free(names, n);
}

/* Write report and report.json (with derived, the queue ID of the strip derivative, or
 * NULL) and drop the parts; durable after the next sync. */
static void router_quarantine_report(struct spool_entry *e, const struct envelope *env,
                                     const struct manifest *m, const struct verdicts *vs,
                                     const char *why, const char *reason, const char *derived)
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
	buf_addstr(&j, "]");
	if (derived)
		buf_printf(&j, ",\"stripped\":\"%s\"", derived); /* a queue ID: [0-9a-f-] */
	buf_addstr(&j, "}\n");
	router_drop_parts(e);
	if (spool_entry_write(e, "report", r.data, r.len) < 0 ||
	    spool_entry_write(e, "report.json", j.data, j.len) < 0)
		die_temp(e->qid, "cannot write the quarantine report: %s", strerror(errno));
	buf_free(&r);
	buf_free(&j);
}

/* The config, for the fleet's event records (set by router_handle). */
static const struct conf *router_conf;

static void router_quarantine_move(struct spool_entry *e, const char *reason)
{
	/* Every way into quarantine/ passes here: the record is synced by the move. */
	export_entry(router_conf, e, EXPORT_QUARANTINE, reason);
	if (spool_entry_move(e, SD_QUARANTINE) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to quarantine/: %s", e->sp->root, e->qid,
		         strerror(errno));
	log_info(e->qid, "quarantined reason=%s", reason);
	metrics_inc("spoold_messages_total", "outcome=\"quarantined\"", 1);
}

static void router_quarantine(struct spool_entry *e, const struct envelope *env,
                              const struct manifest *m, const struct verdicts *vs, const char *why,
                              const char *reason)
{
	router_quarantine_report(e, env, m, vs, why, reason, NULL);
	if (spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write the quarantine report: %s", strerror(errno));
	trace_add(e->fd, e->qid, "quarantine reason=%s", reason);
	CRASH_POINT("route-quarantine");
	router_quarantine_move(e, reason);
}

static void router_hold(struct stage *st, struct spool_entry *e, const char *why)
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
	if (spool_entry_write(e, "hold", b.data, b.len) < 0 ||
	    spool_entry_write(e, "reason", rs.data, rs.len) < 0 || spool_entry_sync(e) < 0)
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

/* Prepare out.<conn>/ with message, envelope and trace: built under a .tmp name and
 * renamed, so an out.<conn>/ that exists is always complete. */
static void router_prepare_out(struct spool_entry *e, const char *conn, const struct envelope *sub,
                               const char *src)
{
	char tmp[128], fin[128];
	snprintf(tmp, sizeof tmp, "out.%s.tmp", conn);
	snprintf(fin, sizeof fin, "out.%s", conn);
	if (remove_tree_at(e->fd, tmp) < 0 || mkdirat(e->fd, tmp, 0770) < 0)
		goto fail;
	int ofd = openat(e->fd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (ofd < 0)
		goto fail;
	/* A hard link shares the message: no copy. Nothing here is fsync'd on its own: the
	 * fanout commit below syncs the filesystem once for every out.<conn>/ together. */
	struct buf b;
	buf_init(&b);
	envelope_format(sub, &b);
	int r = linkat(e->fd, src, ofd, "message", 0);
	/* The trace is a record for people, never trusted: one this user may not link (gone,
	 * or made unwritable to us by its owner: protected_hardlinks) must not stop the
	 * delivery, or one entry would stop the router at every restart. The outbox entry
	 * then starts a trace of its own that says so. */
	if (r == 0 && linkat(e->fd, "trace", ofd, "trace", 0) < 0)
		trace_add(ofd, e->qid, "router trace_not_linked error=%s", strerror(errno));
	if (r == 0)
		r = write_file_replace(ofd, "envelope", b.data, b.len, 0640);
	int err = errno;
	close(ofd);
	buf_free(&b);
	errno = err;
	if (r < 0 || renameat(e->fd, tmp, e->fd, fin) < 0)
		goto fail;
	return;
fail:
	die_temp(e->qid, "cannot prepare %s/route/%s/%s: %s", e->sp->root, e->qid, fin,
	         strerror(errno));
}

/* Finish a committed fan-out: move every out.<conn>/ still present, then drop the rest. */
static void router_fanout_finish(struct spool_entry *e)
{
	struct buf b;
	buf_init(&b);
	/* Only our own plan (trust by ownership): one that another user slipped in after
	 * router_untrusted looked is refused here, and seen by it at the next claim. */
	if (read_file_owned_at(e->fd, "fanout", &b, 1 << 20, geteuid(), NULL) < 0)
		die_temp(e->qid, "cannot read fanout: %s", strerror(errno));
	char *line = b.data, *nl;
	int moved = 0;
	while (line && (nl = strchr(line, '\n')) != NULL) {
		*nl = '\0';
		if (strcmp(line, "end") == 0)
			break;
		char sub[128];
		snprintf(sub, sizeof sub, "out.%s", line);
		int r = spool_entry_move_sub_to_outbox(e, sub, line);
		if (r < 0)
			die_temp(e->qid, "cannot move %s to outbox/%s: %s", sub, line,
			         strerror(errno));
		if (r == 1) {
			/* The outbox entry's trace is the same file (a hard link): it records its
			 * own arrival. */
			trace_add(e->fd, e->qid, "outbox connector=%s", line);
			log_info(e->qid, "delivered to outbox/%s", line);
			if (moved++ == 0)
				CRASH_POINT("route-fanout-one");
		}
		line = nl + 1;
	}
	buf_free(&b);
	CRASH_POINT("route-fanout-done");
	if (spool_entry_retire(e) < 0)
		log_warn(e->qid, "cannot retire the routed work directory: %s", strerror(errno));
}

static void router_deliver(struct stage *st, struct spool_entry *e, const struct envelope *env,
                           const char *src)
{
	const struct conf *c = st->conf;
	struct buf plan;
	buf_init(&plan);
	/* Group the recipients by connector, in configuration order. */
	for (size_t ci = 0; ci < c->n_connectors; ci++) {
		const char *conn = c->connectors[ci].name;
		struct envelope sub;
		envelope_init(&sub);
		sub.smtputf8 = env->smtputf8; /* before the recipients: it admits UTF-8 ones */
		sub.sender = xstrdup(env->sender);
		for (size_t i = 0; i < env->n_rcpts; i++)
			if (strcmp(router_connector_for(c, env->rcpts[i]), conn) == 0)
				envelope_add_rcpt(&sub, env->rcpts[i]);
		if (sub.n_rcpts > 0) {
			router_prepare_out(e, conn, &sub, src);
			buf_printf(&plan, "%s\n", conn);
			trace_add(e->fd, e->qid, "route connector=%s rcpts=%zu", conn, sub.n_rcpts);
		}
		envelope_free(&sub);
	}
	buf_addstr(&plan, "end\n");
	/* Without a journal the filesystem may persist the plan before the out.<conn>/ it
	 * names, and a power cut then would leave a committed plan over an incomplete
	 * out.<conn>/: sync them first. With a journal, one sync keeps the order. */
	if (!e->sp->rename_journaled && spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot sync %s/route/%s: %s", e->sp->root, e->qid,
		         strerror(errno));
	/* The fleet's record of the routing, synced with the plan that commits it. */
	export_entry(st->conf, e, EXPORT_OUTBOX, NULL);
	/* The plan commits the fan-out: from here on out.<conn>/ are only ever moved. */
	if (spool_entry_write(e, "fanout", plan.data, plan.len) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write fanout: %s", strerror(errno));
	buf_free(&plan);
	CRASH_POINT("route-fanout-plan");
	router_fanout_finish(e);
}

/* Without a committed plan, out.* and derived* are debris of an interrupted
 * preparation. */
static void router_drop_outs(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		die_temp(e->qid, "cannot list the work directory: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		if ((strncmp(names[i], "out.", 4) == 0 || strncmp(names[i], "derived", 7) == 0) &&
		    remove_tree_at(e->fd, names[i]) < 0) {
			/* Not ours to remove (a separated spool: another stage's user made it, with
			 * a mode that keeps us out): out of the way under a name no step uses,
			 * which needs only the work directory, never a stall of the stage. */
			char aside[300];
			int err = errno;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			snprintf(aside, sizeof aside, "untrusted.%s.%lld%09ld", names[i],
			         (long long)ts.tv_sec, ts.tv_nsec);
			if (renameat(e->fd, names[i], e->fd, aside) < 0)
				die_temp(e->qid, "cannot remove %s (%s) or set it aside: %s",
				         names[i], strerror(err), strerror(errno));
			log_warn(e->qid, "cannot remove %s (%s): set aside as %s", names[i],
			         strerror(err), aside);
		}
	spool_names_free(names, n);
}

/* Banned attachments: by file name extension (the last one, after the trailing dots and
 * spaces Windows ignores) and by content type. Names are the manifest's decoded bytes;
 * they are only compared, never used as paths. Returns how many parts are banned. */
static int router_banned(const struct conf_router *rc, const struct manifest *m, struct buf *why,
                         unsigned char *flags)
{
	int n = 0;
	for (size_t i = 0; i < m->n_parts; i++) {
		const struct manifest_part *p = &m->parts[i];
		if (p->found == FOUND_RAW)
			continue; /* the whole message, not an attachment */
		char name[256];
		size_t l = strlen(p->filename);
		if (l >= sizeof name)
			l = sizeof name - 1;
		for (size_t k = 0; k < l; k++)
			name[k] = (char)tolower((unsigned char)p->filename[k]);
		while (l > 0 && (name[l - 1] == '.' || name[l - 1] == ' ' || name[l - 1] == '\t'))
			l--;
		name[l] = '\0';
		const char *rule = NULL, *what = NULL;
		const char *dot = strrchr(name, '.');
		if (dot && dot[1]) {
			for (char **x = rc->banned_extensions; *x && !rule; x++)
				if (strcmp(dot + 1, *x) == 0) {
					/* "invoice.pdf.exe": the first extension is what the user
					 * sees. */
					const char *prev =
					    dot > name ? memrchr(name, '.', (size_t)(dot - name))
					               : NULL;
					rule = prev && dot - prev > 1 ? "double extension"
					                              : "extension";
					what = dot;
				}
		}
		for (char **t = rc->banned_types; *t && !rule; t++)
			if (fnmatch(*t, p->type, FNM_CASEFOLD) == 0) {
				rule = "content type";
				what = p->type;
			}
		if (!rule)
			continue;
		struct buf fn;
		buf_init(&fn);
		escape_bytes(&fn, p->filename, strlen(p->filename), 256);
		buf_printf(why, "part %u (%s): banned %s ", p->index, fn.len ? buf_cstr(&fn) : "-",
		           rule);
		router_text(why, what, 256);
		buf_addstr(why, "\n");
		buf_free(&fn);
		if (flags)
			flags[i] = 1;
		n++;
	}
	return n;
}

/* Header-safe text: printable ASCII only, bounded, so nothing a scanner printed can
 * start a new header line. */
static void router_hdr_text(struct buf *h, const char *s, size_t max)
{
	for (size_t i = 0; s[i] && i < max; i++)
		buf_addstr(h, s[i] >= 0x20 && s[i] < 0x7f ? (char[]){s[i], 0} : "?");
}

/* "X-Virus-Scanned: spoold; clamscan (ClamAV 1.0.x/27000)": one entry per scanner that
 * gave a verdict, folded one scanner a line so the header stays under 998 bytes a line. */
static void router_scanned_header(const struct verdicts *vs, const char *eol, struct buf *h)
{
	buf_addstr(h, "X-Virus-Scanned: spoold");
	for (size_t i = 0; i < vs->n; i++) {
		int seen = 0;
		for (size_t k = 0; k < i && !seen; k++)
			seen = strcmp(vs->lines[k].scanner, vs->lines[i].scanner) == 0;
		if (seen)
			continue;
		buf_printf(h, ";%s\t", eol);
		router_hdr_text(h, vs->lines[i].scanner, 64);
		buf_addstr(h, " (");
		router_hdr_text(
		    h, vs->lines[i].version[0] ? vs->lines[i].version : "version unknown", 200);
		buf_addstr(h, ")");
	}
	buf_addstr(h, eol);
}

/* Is the header line p[0..n) a field named X-Virus-Scanned or X-Virus-Scan-Warning, in
 * any case, with or without blanks before the colon (RFC 5322's obsolete syntax, which
 * some readers still accept)? */
static int router_hdr_is_scan_field(const char *p, size_t n)
{
	static const char *const names[] = {"x-virus-scanned", "x-virus-scan-warning"};
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		size_t l = strlen(names[i]), k = l;
		if (n <= l || strncasecmp(p, names[i], l) != 0)
			continue;
		while (k < n && (p[k] == ' ' || p[k] == '\t'))
			k++;
		if (k < n && p[k] == ':')
			return 1;
	}
	return 0;
}

/* Copy msg[0..len) to fd (or only count, if fd < 0) without the X-Virus-Scanned and
 * X-Virus-Scan-Warning fields of its top-level header block, their folded continuation
 * lines included. A sender's forged "X-Virus-Scanned: Clean" must never be what a
 * downstream filter trusts: only the router says whether mail was scanned. The header
 * block ends at the first empty line ("\n" or "\r\n"); every other byte is copied as it
 * is, in as many writes as fields removed plus one, so no buffer grows with the input.
 * Returns the number of fields removed, or -1 with errno on a write error. */
static long router_copy_unforged(int fd, const char *msg, size_t len)
{
	size_t i = 0, keep = 0;
	long removed = 0;
	int dropping = 0;
	while (i < len) {
		if (msg[i] == '\n' || (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n'))
			break;
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t next = nl ? (size_t)(nl - msg) + 1 : len;
		/* A line that starts with a blank continues the field before it. */
		if (msg[i] != ' ' && msg[i] != '\t') {
			dropping = router_hdr_is_scan_field(msg + i, next - i);
			removed += dropping;
		}
		if (dropping) {
			if (fd >= 0 && i > keep && write_all(fd, msg + keep, i - keep) < 0)
				return -1;
			keep = next;
		}
		i = next;
	}
	if (fd >= 0 && len > keep && write_all(fd, msg + keep, len - keep) < 0)
		return -1;
	return removed;
}

/* Write message.out: hdrs, then msg[0..len) without forged scan headers. It is made
 * durable with the rest of the fan-out by the fanout commit's sync, before any
 * out.<conn>/ leaves for an outbox. */
static void router_write_out(struct spool_entry *e, const struct buf *hdrs, const char *msg,
                             size_t len)
{
	/* Ours and new: the delivered copy must belong to the router's user alone. */
	int out = open_fresh_at(e->fd, "message.out.tmp", O_WRONLY, 0640);
	if (out < 0 || write_all(out, hdrs->data, hdrs->len) < 0 ||
	    router_copy_unforged(out, msg, len) < 0)
		goto fail;
	if (close(out) < 0) {
		out = -1;
		goto fail;
	}
	if (renameat(e->fd, "message.out.tmp", e->fd, "message.out") < 0)
		die_temp(e->qid, "cannot rename %s/route/%s/message.out.tmp: %s", e->sp->root,
		         e->qid, strerror(errno));
	return;
fail:
	die_temp(e->qid, "cannot write %s/route/%s/message.out: %s", e->sp->root, e->qid,
	         strerror(errno));
}

/* Replace every infected leaf by a short text/plain part, copying all other bytes as they
 * are, by the entity ranges the splitter recorded (router/strip.c). Fails (-1, why
 * filled) when the message cannot be cleaned for sure: it was not fully split (an
 * unscannable mark), a verdict is on the whole message or on a part that is no cuttable
 * entity (embedded payload, preamble, a message body, a leaf without a range), a
 * whole-message verdict no stripped leaf explains, a banned part that is not inside a cut,
 * or a range whose bytes are not the ones the splitter hashed. The caller then
 * quarantines: strip never delivers what it cannot remove. */
static int router_strip(struct stage *st, struct spool_entry *e, const struct manifest *m,
                        const struct verdicts *vs, struct buf *out, struct buf *why)
{
	unsigned char *banned = xcalloc(m->n_parts + 1, 1);
	struct buf bw;
	buf_init(&bw);
	router_banned(&st->conf->router, m, &bw, banned);
	buf_free(&bw);
	struct buf msg;
	struct strip_cut *r = xcalloc(vs->n + 1, sizeof *r);
	size_t nr = 0;
	int rc = -1;
	buf_init(&msg);
	if (m->n_unscannable) {
		buf_addstr(why, "strip: the message was not split whole (unscannable)\n");
		goto out;
	}
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->verdict != V_INFECTED)
			continue;
		if (l->part <= 0 || (size_t)l->part > m->n_parts) {
			buf_printf(why, "strip: %s was found in the message as a whole\n",
			           l->virus);
			goto out;
		}
		const struct manifest_part *p = &m->parts[l->part - 1];
		if (p->found == FOUND_RAW)
			continue; /* checked below against the leaves */
		if (p->found != FOUND_LEAF || !p->has_entity) {
			buf_printf(why, "strip: part %u (path %s, %s) cannot be cut out\n",
			           p->index, p->path, manifest_found_name(p->found));
			goto out;
		}
		r[nr].start = p->entity_start;
		r[nr].end = p->entity_end;
		r[nr].sha256 = p->entity_sha256;
		r[nr].part = p->index;
		r[nr].virus = l->virus;
		r[nr].filename = p->filename;
		nr++;
	}
	/* The raw message's verdict is explained only if the same virus was in a leaf. */
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->verdict != V_INFECTED || l->part <= 0 || (size_t)l->part > m->n_parts ||
		    m->parts[l->part - 1].found != FOUND_RAW)
			continue;
		int ok = 0;
		for (size_t k = 0; k < nr && !ok; k++)
			ok = strcmp(r[k].virus, l->virus) == 0;
		if (!ok) {
			buf_printf(why, "strip: %s in the whole message is in no strippable part\n",
			           l->virus);
			goto out;
		}
	}
	/* A banned part that is not inside a cut would be delivered: refuse. */
	for (size_t i = 0; i < m->n_parts; i++) {
		const struct manifest_part *p = &m->parts[i];
		int ok = 0;
		if (!banned[i])
			continue;
		for (size_t k = 0; k < nr && !ok && p->has_entity; k++)
			ok = r[k].start <= p->entity_start && p->entity_end <= r[k].end;
		if (!ok) {
			buf_printf(why, "strip: part %u is banned and not infected\n", p->index);
			goto out;
		}
	}
	if (read_file_at(e->fd, "message", &msg, st->conf->splitter.max_message_size + 1) < 0) {
		buf_printf(why, "strip: cannot read the message: %s\n", strerror(errno));
		goto out;
	}
	if (strip_apply(msg.data ? msg.data : "", msg.len, r, nr, out, why) < 0)
		goto out;
	for (size_t k = 0; k < nr; k++) {
		struct buf v;
		buf_init(&v);
		escape_bytes(&v, r[k].virus, strlen(r[k].virus), 200);
		trace_add(e->fd, e->qid, "strip part=%u virus=%s", r[k].part, buf_cstr(&v));
		buf_free(&v);
	}
	rc = 0;
out:
	free(r);
	free(banned);
	buf_free(&msg);
	return rc;
}

static void router_viruses(const struct verdicts *vs, struct buf *out)
{
	for (size_t i = 0; i < vs->n; i++) {
		if (vs->lines[i].verdict != V_INFECTED)
			continue;
		int seen = 0;
		for (size_t k = 0; k < i && !seen; k++)
			seen = vs->lines[k].verdict == V_INFECTED &&
			       strcmp(vs->lines[k].virus, vs->lines[i].virus) == 0;
		if (seen)
			continue;
		if (out->len)
			buf_addstr(out, ",");
		escape_bytes(out, vs->lines[i].virus, strlen(vs->lines[i].virus), 200);
	}
}

/* An address for a notice's header: the bytes an RFC 5321 address is made of pass, any
 * other (a CR, a LF, a space, '<', '>', ',', a quote) becomes '?', so an address from an
 * envelope can neither end the field, nor add a header, nor add a second address. */
static void router_hdr_addr(struct buf *h, const char *s)
{
	for (size_t i = 0; s[i] && i < 254; i++) {
		char c = s[i];
		int ok = isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-/=?^_`{|}~.@", c));
		buf_add(h, ok ? &c : "?", 1);
	}
}

/* One notice as an RFC 5322 message. Its header fields are built only from safe bytes:
 * addresses through router_hdr_addr, the subject through router_hdr_text, the rest the
 * router's own (host name filtered, queue ID, date). The body is passed through
 * router_text_block: whatever a caller quoted, a notice holds no control byte but its
 * line breaks, and nothing in the body can reach the header block. */
static void router_notice_one(struct stage *st, const char *about, const char *conn,
                              const struct envelope *to, const char *subject, const char *body)
{
	const struct conf_router *rc = &st->conf->router;
	char host[256], date[64], qid[SPOOL_QID_LEN + 1];
	if (gethostname(host, sizeof host) < 0)
		strcpy(host, "localhost");
	host[sizeof host - 1] = '\0';
	for (char *h = host; *h; h++)
		if (!isalnum((unsigned char)*h) && *h != '.' && *h != '-')
			*h = '-';
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
	struct buf m, rl;
	buf_init(&m);
	buf_init(&rl);
	for (size_t i = 0; i < to->n_rcpts; i++) {
		buf_addstr(&rl, i ? ", <" : "<");
		router_hdr_addr(&rl, to->rcpts[i]);
		buf_addstr(&rl, ">");
	}
	buf_addstr(&m, "From: spoold <");
	if (rc->notify_from[0])
		router_hdr_addr(&m, rc->notify_from);
	else
		buf_printf(&m, "MAILER-DAEMON@%s", host);
	buf_printf(&m, ">\nTo: %s\nSubject: ", buf_cstr(&rl));
	router_hdr_text(&m, subject, 200);
	buf_addstr(&m, "\nMessage-ID: <");
	router_hdr_addr(&m, about);
	buf_printf(&m,
	           ".notice.%lld@%s>\nDate: %s\n"
	           "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n"
	           "Content-Transfer-Encoding: 7bit\nAuto-Submitted: auto-generated\n\n",
	           (long long)now_us_wall(), host, date);
	router_text_block(&m, body);
	struct envelope env;
	envelope_init(&env);
	/* The null sender by default: a notice must never bounce back into a loop. */
	env.sender = xstrdup(rc->notify_from);
	for (size_t i = 0; i < to->n_rcpts; i++)
		envelope_add_rcpt(&env, to->rcpts[i]);
	if (notice_write(&st->spool, conn, &env, m.data, m.len, about, qid) < 0)
		log_warn(about, "cannot write a notice into outbox/%s: %s", conn, strerror(errno));
	else
		log_info(about, "notice %s to %s in outbox/%s", qid, buf_cstr(&rl), conn);
	envelope_free(&env);
	buf_free(&m);
	buf_free(&rl);
}

/* Admin and recipient notices for infected or banned mail (off by default). Never to the
 * sender: the envelope sender of virus mail is almost always forged, so a notice would go
 * to an innocent third party (backscatter). */
static void router_notify(struct stage *st, const char *qid, const struct envelope *env,
                          const struct verdicts *vs, const char *action, const char *reason,
                          const char *why)
{
	const struct conf *c = st->conf;
	const struct conf_router *rc = &c->router;
	if (!rc->notify_admin[0] && !rc->notify_recipients)
		return;
	struct buf v, s, b, subj;
	buf_init(&v);
	buf_init(&s);
	buf_init(&b);
	buf_init(&subj);
	router_viruses(vs, &v);
	escape_bytes(&s, env->sender, strlen(env->sender), 998);
	if (rc->notify_admin[0]) {
		buf_printf(&subj, "spoold: %s message %s (%s)", reason, qid, action);
		buf_printf(&b,
		           "Queue ID: %s\nAction: %s\nReason: %s\nViruses: %s\nSender: %s\n"
		           "Recipients:\n",
		           qid, action, reason, v.len ? buf_cstr(&v) : "-",
		           s.len ? buf_cstr(&s) : "<>");
		for (size_t i = 0; i < env->n_rcpts; i++) {
			buf_addstr(&b, "  ");
			router_text(&b, env->rcpts[i], 998);
			buf_addstr(&b, "\n");
		}
		buf_printf(&b, "\nDetails (escaped):\n%s", why);
		struct envelope to;
		envelope_init(&to);
		envelope_add_rcpt(&to, rc->notify_admin);
		router_notice_one(st, qid, rc->default_connector, &to, buf_cstr(&subj),
		                  buf_cstr(&b));
		envelope_free(&to);
	}
	if (rc->notify_recipients) {
		for (size_t ci = 0; ci < c->n_connectors; ci++) {
			struct envelope to;
			envelope_init(&to);
			for (size_t i = 0; i < env->n_rcpts; i++)
				if (strcmp(router_connector_for(c, env->rcpts[i]),
				           c->connectors[ci].name) == 0)
					envelope_add_rcpt(&to, env->rcpts[i]);
			if (to.n_rcpts) {
				buf_reset(&b);
				buf_reset(&subj);
				buf_printf(&subj, "A message to you was %s by the virus filter",
				           strcmp(action, "strip") == 0 ? "cleaned" : "stopped");
				buf_printf(
				    &b,
				    "A message to you from %s was stopped or cleaned by the "
				    "virus filter.\n\nQueue ID: %s\nAction: %s\nReason: %s\n"
				    "Viruses: %s\n\nAsk your administrator if you need it.\n",
				    s.len ? buf_cstr(&s) : "<>", qid, action, reason,
				    v.len ? buf_cstr(&v) : "-");
				router_notice_one(st, qid, c->connectors[ci].name, &to,
				                  buf_cstr(&subj), buf_cstr(&b));
			}
			envelope_free(&to);
		}
	}
	buf_free(&v);
	buf_free(&s);
	buf_free(&b);
	buf_free(&subj);
}

/* discard: the message ends nowhere, through trash/ (never half-deleted in route/), with
 * one log line that keeps the envelope and the virus names: amavisd-new's D_DISCARD. */
static void router_discard(struct spool_entry *e, const struct envelope *env,
                           const struct verdicts *vs)
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

/* The one way mail leaves with headers of ours: every delivery (clean, stripped, released,
 * unscanned after max_hold_time) comes here, so forged scan headers are removed on every
 * path. vs is NULL when nothing was scanned clean (a release, an unscanned delivery):
 * then there is no X-Virus-Scanned, whatever add_scanned_header says, only extra_hdr
 * (the NOT SCANNED warning) if given. body replaces the message when given (strip). */
static void router_deliver_scanned(struct stage *st, struct spool_entry *e,
                                   const struct envelope *env, const struct verdicts *vs,
                                   const char *extra_hdr, const struct buf *body)
{
	struct buf h;
	const char *src = "";
	size_t len = 0;
	void *map = MAP_FAILED;
	struct stat sb = {.st_uid = geteuid()};
	buf_init(&h);
	struct buf whole;
	buf_init(&whole);
	if (body) {
		src = body->data ? body->data : "";
		len = body->len;
	} else if (vs && vs->msg_sha256) {
		/* The runner scanned a copy with this hash (a separated spool): read the message
		 * into memory once, check it is those bytes, and deliver from that memory, so that
		 * what leaves is what was scanned, whatever its owner does to the file now. */
		char hex[65];
		if (read_file_at(e->fd, "message", &whole, SIZE_MAX / 2) < 0)
			die_temp(e->qid, "cannot read %s/route/%s/message: %s", e->sp->root, e->qid,
			         strerror(errno));
		util_sha256_hex(whole.data ? whole.data : "", whole.len, hex);
		if (strcmp(hex, vs->msg_sha256) != 0) {
			struct buf why;
			buf_init(&why);
			buf_printf(
			    &why,
			    "the message changed after it was scanned (sha256 %.16s..., scanned "
			    "%.16s...)\n",
			    hex, vs->msg_sha256);
			log_error(e->qid,
			          "the message changed after it was scanned: not delivered");
			trace_add(e->fd, e->qid, "message-changed sha256=%s scanned=%s", hex,
			          vs->msg_sha256);
			router_hold(st, e, buf_cstr(&why));
			buf_free(&why);
			buf_free(&whole);
			buf_free(&h);
			return;
		}
		src = whole.data ? whole.data : "";
		len = whole.len;
		sb.st_uid = (uid_t)-1; /* never linked: delivered from the checked bytes */
	} else {
		/* Mapped, not read: a message may be as large as max_message_size, and only
		 * its header block is looked at. The entry is locked, so nobody changes it. */
		int fd = openat(e->fd, "message", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &sb) < 0)
			die_temp(e->qid, "cannot open %s/route/%s/message: %s", e->sp->root, e->qid,
			         strerror(errno));
		if (sb.st_size > 0) {
			map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
			if (map == MAP_FAILED)
				die_temp(e->qid, "cannot map %s/route/%s/message: %s", e->sp->root,
				         e->qid, strerror(errno));
			src = map;
			len = (size_t)sb.st_size;
		}
		close(fd);
	}
	const char *eol = strip_eol(src, len);
	if (extra_hdr)
		buf_printf(&h, "%s%s", extra_hdr, eol);
	if (vs && st->conf->router.add_scanned_header)
		router_scanned_header(vs, eol, &h);
	long forged = router_copy_unforged(-1, src, len);
	if (forged > 0) {
		trace_add(e->fd, e->qid, "removed forged-scan-headers=%ld", forged);
		log_warn(e->qid,
		         "removed %ld X-Virus-Scanned/X-Virus-Scan-Warning field(s) that "
		         "came with the message",
		         forged);
	}
	/* A copy of our own whenever the message is not ours (a separated spool: it belongs
	 * to the splitter's user, who could change a shared inode after this decision, and
	 * whose file protected_hardlinks would not let us link anyway). */
	if (h.len || body || forged > 0 || sb.st_uid != geteuid()) {
		router_write_out(e, &h, src, len);
		router_deliver(st, e, env, "message.out");
	} else {
		router_deliver(st, e, env, "message");
	}
	if (map != MAP_FAILED && munmap(map, len) < 0)
		log_warn(e->qid, "cannot unmap the message: %s", strerror(errno));
	buf_free(&whole);
	buf_free(&h);
}

/* The origin of a strip derivative: "spoold-strip/<qid>". A '/' is in no file name, so
 * no message dropped into inbound/ has this origin (spool_inbound_claim writes the
 * inbound name there): only the router itself makes one. */
#define ROUTER_DERIVED_ORIGIN "spoold-strip/"

/* Is this entry a strip derivative? Then *of gets the qid it was stripped from. */
static int router_derived(struct spool_entry *e, char of[SPOOL_QID_LEN + 1])
{
	struct buf b;
	buf_init(&b);
	int yes = 0;
	size_t pl = strlen(ROUTER_DERIVED_ORIGIN);
	if (read_file_at(e->fd, "origin", &b, 4096) == 0 && b.len >= pl &&
	    memcmp(b.data, ROUTER_DERIVED_ORIGIN, pl) == 0) {
		yes = 1;
		snprintf(of, SPOOL_QID_LEN + 1, "%.*s", SPOOL_QID_LEN, b.data + pl);
	}
	buf_free(&b);
	return yes;
}

/* Finish a committed strip (the `strip` plan names the derivative's qid): hand derived/
 * on to incoming/ if it is still here, then move the original into quarantine/. Each
 * step is one rename, and a restart redoes only the steps still to do, so there is never
 * a second derivative, and never none. */
static void router_strip_finish(struct spool_entry *e)
{
	struct buf b;
	buf_init(&b);
	if (read_file_owned_at(e->fd, "strip", &b, 4096, geteuid(), NULL) < 0)
		die_temp(e->qid, "cannot read %s/route/%s/strip: %s", e->sp->root, e->qid,
		         strerror(errno));
	char d[SPOOL_QID_LEN + 1];
	const char *nl = memchr(b.data ? b.data : "", '\n', b.len);
	if (nl == NULL || (size_t)(nl - b.data) != SPOOL_QID_LEN)
		log_panic("%s: malformed strip plan in %s/route/%s", e->qid, e->sp->root, e->qid);
	memcpy(d, b.data, SPOOL_QID_LEN);
	d[SPOOL_QID_LEN] = '\0';
	buf_free(&b);
	int r = spool_entry_move_sub_to_incoming(e, "derived", d);
	if (r < 0)
		die_temp(e->qid, "cannot move %s/route/%s/derived to incoming/%s: %s", e->sp->root,
		         e->qid, d, strerror(errno));
	if (r == 1) {
		log_info(e->qid, "stripped message handed on as %s", d);
		CRASH_POINT("route-strip-handoff");
	}
	trace_add(e->fd, e->qid, "quarantine reason=infected stripped=%s", d);
	router_quarantine_move(e, "infected");
}

/* strip: the stripped message is a new message with its own queue ID, split and scanned
 * again before it may be delivered; the original goes to quarantine. Steps (docs/
 * INTERNALS.md, S4g): derived/ is built complete under derived.tmp/ and renamed; the
 * quarantine report is written; one sync; the plan `strip` (the derivative's qid) is
 * written and synced - the commit; then router_strip_finish. */
static void router_strip_commit(struct spool_entry *e, const struct envelope *env,
                                const struct manifest *m, const struct verdicts *vs,
                                const struct buf *body, struct buf *why)
{
	char d[SPOOL_QID_LEN + 1];
	spool_qid_new(d);
	if (remove_tree_at(e->fd, "derived.tmp") < 0 || remove_tree_at(e->fd, "derived") < 0 ||
	    mkdirat(e->fd, "derived.tmp", 0770) < 0)
		goto fail;
	int dfd = openat(e->fd, "derived.tmp", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		goto fail;
	struct buf eb, ob;
	buf_init(&eb);
	buf_init(&ob);
	envelope_format(env, &eb);
	buf_printf(&ob, "%s%s\n", ROUTER_DERIVED_ORIGIN, e->qid);
	/* A bare message with its committed envelope is what the splitter's recovery of an
	 * incoming/ entry splits; attempts 0: its first split is attempt 1. Nothing is
	 * fsync'd on its own: the one sync before the plan covers it all. */
	int w = write_file_replace(dfd, "message", body->data ? body->data : "", body->len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, "envelope", eb.data, eb.len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, "origin", ob.data, ob.len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, "attempts", "0\n", 2, 0640);
	int err = errno;
	buf_free(&eb);
	buf_free(&ob);
	if (w == 0)
		trace_add(dfd, d, "derived from=%s action=strip", e->qid);
	close(dfd);
	errno = err;
	if (w < 0 || renameat(e->fd, "derived.tmp", e->fd, "derived") < 0)
		goto fail;
	CRASH_POINT("route-strip-prepared");
	buf_printf(why,
	           "stripped: the rest of the message was handed on as %s, scanned again "
	           "before delivery\n",
	           d);
	router_quarantine_report(e, env, m, vs, buf_cstr(why), "infected", d);
	/* Without a journal the plan could reach the disk before derived/: sync first. */
	if (!e->sp->rename_journaled && spool_entry_sync(e) < 0)
		goto fail;
	/* The plan commits the strip: from here on derived/ is only ever moved. */
	struct buf plan;
	buf_init(&plan);
	buf_printf(&plan, "%s\nend\n", d);
	w = spool_entry_write(e, "strip", plan.data, plan.len);
	buf_free(&plan);
	if (w < 0 || spool_entry_sync(e) < 0)
		goto fail;
	trace_add(e->fd, e->qid, "strip derivative=%s", d);
	CRASH_POINT("route-strip-plan");
	router_strip_finish(e);
	return;
fail:
	die_temp(e->qid, "cannot prepare the stripped message in %s/route/%s: %s", e->sp->root,
	         e->qid, strerror(errno));
}

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
    {"manifest", ROLE_SPLITTER}, {"verdicts", ROLE_RUNNER}, {"fanout", ROLE_ROUTER},
    {"strip", ROLE_ROUTER},      {"report", ROLE_ROUTER},   {"release", ROLE_SPOOL},
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
	if (fstatat(e->fd, "release", &rs, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	uid_t admin = conf_role_uid(st->conf, ROLE_SPOOL);
	uid_t router = conf_role_uid(st->conf, ROLE_ROUTER);
	return S_ISREG(rs.st_mode) && (rs.st_uid == admin || rs.st_uid == 0) &&
	       fstatat(e->fd, "report", &qs, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(qs.st_mode) &&
	       (qs.st_uid == router || qs.st_uid == 0);
}

static int router_handle(struct stage *st, const char *qid)
{
	router_conf = st->conf;
	struct spool_entry e;
	struct manifest m;
	struct verdicts vs;
	struct envelope env;
	struct stat sb;
	char reason[512];
	int r = spool_entry_claim_rw(&st->spool, SD_ROUTE, qid, &e);
	if (r <= 0)
		return r == 0 && errno == EWOULDBLOCK ? -1 : 0;
	struct buf forged;
	buf_init(&forged);
	if (router_untrusted(st, &e, &forged) > 0) {
		log_warn(qid, "control files not written by their stage: %s; the message is held",
		         buf_cstr(&forged));
		trace_add(e.fd, qid, "untrusted files set aside");
		router_drop_outs(&e);
		router_hold(st, &e, buf_cstr(&forged));
		buf_free(&forged);
		spool_entry_release(&e);
		return 1;
	}
	buf_free(&forged);
	if (fstatat(e.fd, "fanout", &sb, AT_SYMLINK_NOFOLLOW) == 0) {
		log_info(qid, "resuming an interrupted fan-out");
		router_fanout_finish(&e);
		spool_entry_release(&e);
		return 1;
	}
	/* A committed strip is finished, never redone - unless the entry is a stripped
	 * original that spoolctl released from quarantine (its plan is done: the release
	 * decides). */
	if (fstatat(e.fd, "strip", &sb, AT_SYMLINK_NOFOLLOW) == 0 && !router_released(st, &e)) {
		log_info(qid, "resuming an interrupted strip");
		router_strip_finish(&e);
		spool_entry_release(&e);
		return 1;
	}
	router_drop_outs(&e);
	manifest_init(&m);
	verdicts_init(&vs);
	envelope_init(&env);
	struct buf why;
	buf_init(&why);
	/* A quarantine entry that spoolctl released: delivered as it was received, without a
	 * rescan and without looking at its verdicts (the administrator decided). */
	if (router_released(st, &e)) {
		if (envelope_read_at(e.fd, &env, reason, sizeof reason) < 0) {
			buf_addstr(&why, "released, but ");
			router_text(&why, reason, sizeof reason);
			buf_addstr(&why, "\n");
			router_hold(st, &e, buf_cstr(&why));
		} else {
			trace_add(e.fd, e.qid, "release deliver");
			log_info(e.qid, "delivering a message released from quarantine");
			/* As received, but never with a sender's own scan headers, and without
			 * ours: the administrator released it, no scanner passed it. */
			router_deliver_scanned(st, &e, &env, NULL, NULL, NULL);
		}
		goto done;
	}
	enum outcome o;
	if (manifest_read_owned_at(e.fd, &m, conf_role_uid(st->conf, ROLE_SPLITTER), reason,
	                           sizeof reason) < 0 ||
	    verdicts_read_owned_at(e.fd, &vs, conf_role_uid(st->conf, ROLE_RUNNER), reason,
	                           sizeof reason) < 0 ||
	    envelope_read_at(e.fd, &env, reason, sizeof reason) < 0) {
		router_text(&why, reason, sizeof reason);
		buf_addstr(&why, "\n");
		o = OUT_HOLD;
	} else if (st->conf->separated && vs.msg_sha256 == NULL && vs.qid &&
	           strcmp(vs.qid, e.qid) != 0) {
		/* Verdicts moved in from another message: they say nothing about this one. Only
		 * where another stage's user could have moved them (one user can forge them
		 * anyway), and only without the message's hash, which binds them better: a
		 * commit rename that met a taken name gives the entry a fresh queue ID after
		 * its verdicts were written, and the hash survives that; the qid does not. */
		buf_addstr(&why, "verdicts are for another message (");
		router_text(&why, vs.qid, strlen(vs.qid));
		buf_addstr(&why, ")\n");
		o = OUT_HOLD;
	} else if (vs.qid == NULL && vs.msg_sha256 == NULL && st->conf->separated) {
		buf_addstr(&why, "verdicts do not name the message they are for\n");
		o = OUT_HOLD;
	} else {
		o = router_decide(&m, &vs, &why);
		/* A banned name needs no scanner: it is quarantined even while a scan failed. */
		if (o != OUT_QUARANTINE) {
			struct buf bw;
			buf_init(&bw);
			if (router_banned(&st->conf->router, &m, &bw, NULL) > 0) {
				o = OUT_BANNED;
				buf_reset(&why);
				buf_add(&why, bw.data, bw.len);
			}
			buf_free(&bw);
		}
	}
	CRASH_POINT("route-claimed");
	char of[SPOOL_QID_LEN + 1];
	if (o == OUT_HOLD && st->conf->router.infected_action == INFECTED_STRIP &&
	    router_derived(&e, of)) {
		/* A stripped message is delivered only on a clean scan of its own: anything
		 * less and the original's verdict stands. */
		char q[SPOOL_QID_LEN + 1];
		memcpy(q, e.qid, sizeof q);
		buf_printf(&why, "strip derivative of %s, not scanned clean\n", of);
		router_quarantine(&e, &env, &m, &vs, buf_cstr(&why), "strip-not-clean");
		router_notify(st, q, &env, &vs, "quarantine", "strip-not-clean", buf_cstr(&why));
	} else if (o == OUT_QUARANTINE) {
		router_infected(st, &e, &env, &m, &vs, &why);
	} else if (o == OUT_BANNED) {
		char q[SPOOL_QID_LEN + 1];
		memcpy(q, e.qid, sizeof q);
		router_quarantine(&e, &env, &m, &vs, buf_cstr(&why), "banned");
		router_notify(st, q, &env, &vs, "quarantine", "banned", buf_cstr(&why));
	} else if (o == OUT_UNSCANNABLE) {
		/* Never delivered, not even with hold_expiry_action = deliver: that is for
		 * a scan that might have worked later, and this one never can. */
		router_quarantine(&e, &env, &m, &vs, buf_cstr(&why), "unscannable");
	} else if (o == OUT_HOLD) {
		struct hold_state h;
		const struct conf_router *rc = &st->conf->router;
		hold_read(e.fd, &h);
		if (hold_expired(&h, (int64_t)time(NULL), rc->max_hold_time)) {
			if (rc->hold_expiry_action == HOLD_EXPIRY_DELIVER && env.n_rcpts > 0) {
				char hdr[256];
				snprintf(hdr, sizeof hdr,
				         "X-Virus-Scan-Warning: NOT SCANNED: delivered unscanned "
				         "after %d "
				         "seconds on hold (hold_expiry_action = deliver)",
				         rc->max_hold_time);
				trace_add(e.fd, e.qid, "hold-expired deliver-unscanned");
				log_warn(e.qid, "delivering UNSCANNED after max_hold_time: %s",
				         buf_cstr(&why));
				/* NULL verdicts: unscanned mail never says X-Virus-Scanned. */
				router_deliver_scanned(st, &e, &env, NULL, hdr, NULL);
			} else {
				router_quarantine(&e, &env, &m, &vs, buf_cstr(&why),
				                  "held-too-long");
			}
		} else {
			router_hold(st, &e, buf_cstr(&why));
		}
	} else {
		router_deliver_scanned(st, &e, &env, &vs, NULL, NULL);
	}
done:
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
	srand((unsigned)(getpid() ^ time(NULL)));
	return stage_main(&st, argc, argv);
}
