/*
 * derive - infected_action = "strip" (S4g): the cuts by the splitter's recorded ranges
 * (strip.c does the byte work), the derivative built as a complete work directory for
 * incoming/, the `strip` plan that commits it, and the hand-off and quarantine move a
 * restart redoes only where still needed. I/O failures exit temp (75); a malformed plan
 * of our own panics.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crash.h"
#include "entry_names.h"
#include "log.h"
#include "router.h"
#include "trace.h"
#include "util.h"

/* The origin of a strip derivative: "spoold-strip/<qid>". A '/' is in no file name, so
 * no message dropped into inbound/ has this origin (spool_inbound_claim writes the
 * inbound name there): only the router itself makes one. */
#define ROUTER_DERIVED_ORIGIN "spoold-strip/"

/* Replace every infected leaf by a short text/plain part, copying all other bytes as they
 * are, by the entity ranges the splitter recorded (router/strip.c). Fails (-1, why
 * filled) when the message cannot be cleaned for sure: it was not fully split (an
 * unscannable mark), a verdict is on the whole message or on a part that is no cuttable
 * entity (embedded payload, preamble, a message body, a leaf without a range), a
 * whole-message verdict no stripped leaf explains, a banned part that is not inside a cut,
 * or a range whose bytes are not the ones the splitter hashed. The caller then
 * quarantines: strip never delivers what it cannot remove. */
int router_strip(struct stage *st, struct spool_entry *e, const struct manifest *m,
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
	if (read_file_at(e->fd, ENTRY_MESSAGE, &msg, st->conf->splitter.max_message_size + 1) < 0) {
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

/* Is this entry a strip derivative? Then *of gets the qid it was stripped from. */
int router_derived(struct spool_entry *e, char of[SPOOL_QID_LEN + 1])
{
	struct buf b;
	buf_init(&b);
	int yes = 0;
	size_t pl = strlen(ROUTER_DERIVED_ORIGIN);
	if (read_file_at(e->fd, ENTRY_ORIGIN, &b, 4096) == 0 && b.len >= pl &&
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
void router_strip_finish(struct spool_entry *e)
{
	struct buf b;
	buf_init(&b);
	if (read_file_owned_at(e->fd, ENTRY_STRIP, &b, 4096, geteuid(), NULL) < 0)
		die_temp(e->qid, "cannot read %s/route/%s/strip: %s", e->sp->root, e->qid,
		         strerror(errno));
	char d[SPOOL_QID_LEN + 1];
	const char *nl = memchr(b.data ? b.data : "", '\n', b.len);
	if (nl == NULL || (size_t)(nl - b.data) != SPOOL_QID_LEN)
		log_panic("%s: malformed strip plan in %s/route/%s", e->qid, e->sp->root, e->qid);
	memcpy(d, b.data, SPOOL_QID_LEN);
	d[SPOOL_QID_LEN] = '\0';
	buf_free(&b);
	int r = spool_entry_move_sub_to_incoming(e, ENTRY_DERIVED, d);
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
void router_strip_commit(struct spool_entry *e, const struct envelope *env,
                         const struct manifest *m, const struct verdicts *vs,
                         const struct buf *body, struct buf *why)
{
	char d[SPOOL_QID_LEN + 1];
	spool_qid_new(d);
	if (remove_tree_at(e->fd, ENTRY_DERIVED_TMP) < 0 ||
	    remove_tree_at(e->fd, ENTRY_DERIVED) < 0 || mkdirat(e->fd, ENTRY_DERIVED_TMP, 0770) < 0)
		goto fail;
	int dfd = openat(e->fd, ENTRY_DERIVED_TMP, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
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
	int w =
	    write_file_replace(dfd, ENTRY_MESSAGE, body->data ? body->data : "", body->len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, ENTRY_ENVELOPE, eb.data, eb.len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, ENTRY_ORIGIN, ob.data, ob.len, 0640);
	if (w == 0)
		w = write_file_replace(dfd, ENTRY_ATTEMPTS, "0\n", 2, 0640);
	int err = errno;
	buf_free(&eb);
	buf_free(&ob);
	if (w == 0)
		trace_add(dfd, d, "derived from=%s action=strip", e->qid);
	close(dfd);
	errno = err;
	if (w < 0 || renameat(e->fd, ENTRY_DERIVED_TMP, e->fd, ENTRY_DERIVED) < 0)
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
	w = spool_entry_write(e, ENTRY_STRIP, plan.data, plan.len);
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
