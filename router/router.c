/*
 * router - acts on the verdicts (docs/INTERNALS.md, states S3 -> S4a..S4c).
 *
 * Every part infected by any scanner: quarantine/. Every part clean: one outbox entry per
 * connector that serves a recipient, each with only that connector's recipients. Anything
 * else (a scanner error, a timeout, an unscannable mark, a part with no verdict): hold/,
 * retried with exponential back-off, and quarantined after max_hold_time. It fails closed:
 * only a positive, complete set of clean verdicts lets mail out.
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <ctype.h>

#include "conf.h"
#include "crash.h"
#include "envelope.h"
#include "log.h"
#include "manifest.h"
#include "router.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"
#include "verdict.h"

enum outcome { OUT_DELIVER, OUT_QUARANTINE, OUT_HOLD, OUT_BANNED };

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
			const struct manifest_part *p =
			    l->part > 0 && (size_t)l->part <= m->n_parts ? &m->parts[l->part - 1] : NULL;
			struct buf fn;
			buf_init(&fn);
			if (p && p->filename[0])
				escape_bytes(&fn, p->filename, strlen(p->filename), 256);
			else if (p)
				buf_printf(&fn, "%s, no filename", manifest_found_name(p->found));
			else
				buf_addstr(&fn, "-");
			buf_printf(why, "part %d (%s): %s found by %s\n", l->part, buf_cstr(&fn),
			           l->virus, l->scanner);
			buf_free(&fn);
		}
		if (l->part < 0 && l->verdict != V_CLEAN) {
			failed = 1;
			buf_printf(why, "message: %s by %s: %s\n", verdict_name(l->verdict), l->scanner,
			           l->output);
		}
	}
	if (infected)
		return OUT_QUARANTINE;
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict v = router_part_verdict(vs, (int)m->parts[i].index);
		if (v != V_CLEAN) {
			failed = 1;
			buf_printf(why, "part %u: not scanned clean (scanner error, timeout or no "
			           "verdict)\n", m->parts[i].index);
		}
	}
	if (m->n_unscannable)
		failed = 1;
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

static void router_quarantine(struct spool_entry *e, const struct envelope *env,
                              const struct manifest *m, const struct verdicts *vs,
                              const char *why, const char *reason)
{
	struct buf r, j;
	buf_init(&r);
	buf_init(&j);
	buf_printf(&r, "Queue ID: %s\nReason: %s\nSender: %s\nRecipients:", e->qid, reason,
	           env->sender);
	for (size_t i = 0; i < env->n_rcpts; i++)
		buf_printf(&r, " %s", env->rcpts[i]);
	buf_printf(&r, "\n\n%s\nParts:\n", why);
	for (size_t i = 0; i < m->n_parts; i++) {
		struct buf fn;
		buf_init(&fn);
		escape_bytes(&fn, m->parts[i].filename, strlen(m->parts[i].filename), 256);
		buf_printf(&r, "  %04u %s %s %s size=%llu\n", m->parts[i].index, m->parts[i].path,
		           m->parts[i].type, fn.len ? buf_cstr(&fn) : "-",
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
		struct buf v;
		buf_init(&v);
		json_escape(&v, vs->lines[i].virus, strlen(vs->lines[i].virus));
		buf_printf(&j, "%s{\"part\":%d,\"scanner\":\"%s\",\"virus\":\"%s\"}", first ? "" : ",",
		           vs->lines[i].part, vs->lines[i].scanner, buf_cstr(&v));
		first = 0;
		buf_free(&v);
	}
	buf_addstr(&j, "]}\n");
	router_drop_parts(e);
	if (spool_entry_write(e, "report", r.data, r.len) < 0 ||
	    spool_entry_write(e, "report.json", j.data, j.len) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write the quarantine report: %s", strerror(errno));
	trace_add(e->fd, e->qid, "quarantine reason=%s", reason);
	CRASH_POINT("route-quarantine");
	if (spool_entry_move(e, SD_QUARANTINE) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to quarantine/: %s", e->sp->root, e->qid,
		         strerror(errno));
	log_info(e->qid, "quarantined reason=%s", reason);
	buf_free(&r);
	buf_free(&j);
}

struct hold_state {
	uint64_t attempts;
	uint64_t first;
	uint64_t next;
};

static void router_hold_read(int dirfd, struct hold_state *h)
{
	struct buf b, v;
	buf_init(&b);
	buf_init(&v);
	h->attempts = 0;
	h->first = 0;
	h->next = 0;
	if (read_file_at(dirfd, "hold", &b, 4096) == 0) {
		const char *s = buf_cstr(&b);
		if (kv_find(s, "attempts", &v) == 0)
			parse_u64(buf_cstr(&v), &h->attempts);
		if (kv_find(s, "first", &v) == 0)
			parse_u64(buf_cstr(&v), &h->first);
		if (kv_find(s, "next", &v) == 0)
			parse_u64(buf_cstr(&v), &h->next);
	}
	buf_free(&b);
	buf_free(&v);
}

static void router_hold(struct stage *st, struct spool_entry *e, const char *why)
{
	const struct conf_router *rc = &st->conf->router;
	struct hold_state h;
	uint64_t now = (uint64_t)time(NULL);
	router_hold_read(e->fd, &h);
	if (h.first == 0)
		h.first = now;
	h.attempts++;
	/* Exponential back-off with jitter, kept in the entry so a restart keeps the schedule. */
	uint64_t delay = (uint64_t)rc->hold_retry_min;
	for (uint64_t i = 1; i < h.attempts && delay < (uint64_t)rc->hold_retry_max; i++)
		delay *= 2;
	if (delay > (uint64_t)rc->hold_retry_max)
		delay = (uint64_t)rc->hold_retry_max;
	delay += (uint64_t)(rand() % (int)(delay / 4 + 1));
	h.next = now + delay;
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "hold attempts=%llu first=%llu next=%llu\n", (unsigned long long)h.attempts,
	           (unsigned long long)h.first, (unsigned long long)h.next);
	struct buf w;
	buf_init(&w);
	escape_bytes(&w, why, strlen(why), 1024);
	if (spool_entry_write(e, "hold", b.data, b.len) < 0 ||
	    spool_entry_write(e, "reason", why, strlen(why)) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write hold state: %s", strerror(errno));
	trace_add(e->fd, e->qid, "hold attempts=%llu next=%llu why=%s",
	          (unsigned long long)h.attempts, (unsigned long long)h.next, buf_cstr(&w));
	CRASH_POINT("route-hold");
	if (spool_entry_move(e, SD_HOLD) < 0)
		die_temp(e->qid, "cannot move %s/route/%s to hold/: %s", e->sp->root, e->qid,
		         strerror(errno));
	log_warn(e->qid, "held attempts=%llu retry_in=%llus why=%s", (unsigned long long)h.attempts,
	         (unsigned long long)delay, buf_cstr(&w));
	buf_free(&b);
	buf_free(&w);
}

/* Prepare out.<conn>/ with message, envelope and trace: built under a .tmp name and
 * renamed, so an out.<conn>/ that exists is always complete. */
static void router_prepare_out(struct spool_entry *e, const char *conn,
                               const struct envelope *sub, const char *src)
{
	char tmp[128], fin[128];
	snprintf(tmp, sizeof tmp, "out.%s.tmp", conn);
	snprintf(fin, sizeof fin, "out.%s", conn);
	if (remove_tree_at(e->fd, tmp) < 0 || mkdirat(e->fd, tmp, 0750) < 0)
		goto fail;
	int ofd = openat(e->fd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (ofd < 0)
		goto fail;
	/* A hard link shares the already-fsync'd message: no copy, no new data to sync. */
	struct buf b;
	buf_init(&b);
	envelope_format(sub, &b);
	int r = linkat(e->fd, src, ofd, "message", 0);
	if (r == 0)
		r = linkat(e->fd, "trace", ofd, "trace", 0);
	if (r == 0)
		r = write_file_atomic(ofd, "envelope", b.data, b.len, 0640);
	if (r == 0)
		r = fsync_dir(ofd);
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
	if (read_file_at(e->fd, "fanout", &b, 1 << 20) < 0)
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
			die_temp(e->qid, "cannot move %s to outbox/%s: %s", sub, line, strerror(errno));
		if (r == 1) {
			log_info(e->qid, "delivered to outbox/%s", line);
			if (moved++ == 0)
				CRASH_POINT("route-fanout-one");
		}
		line = nl + 1;
	}
	buf_free(&b);
	CRASH_POINT("route-fanout-done");
	if (spool_entry_trash(e) < 0)
		log_warn(e->qid, "cannot remove the routed work directory: %s", strerror(errno));
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
	/* The plan commits the fan-out: from here on out.<conn>/ are only ever moved. */
	if (spool_entry_write(e, "fanout", plan.data, plan.len) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write fanout: %s", strerror(errno));
	buf_free(&plan);
	CRASH_POINT("route-fanout-plan");
	router_fanout_finish(e);
}

/* Without a committed plan, out.* are debris of an interrupted preparation. */
static void router_drop_outs(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		die_temp(e->qid, "cannot list the work directory: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		if (strncmp(names[i], "out.", 4) == 0 && remove_tree_at(e->fd, names[i]) < 0)
			die_temp(e->qid, "cannot remove %s: %s", names[i], strerror(errno));
	spool_names_free(names, n);
}

