/*
 * deliver - the fan-out (S4a): the message as delivered (message.out: our headers, forged
 * scan header fields removed, or the scanned bytes when the runner hashed them), one
 * out.<conn>/ per connector that serves a recipient, the `fanout` plan that commits them,
 * then one rename per connector into its outbox. A restart with a plan only renames what
 * is left: nothing is prepared twice. I/O failures exit temp (75).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crash.h"
#include "entry_names.h"
#include "log.h"
#include "router.h"
#include "trace.h"
#include "util.h"

/* Prepare out.<conn>/ with message, envelope, trace and the fleet's pass (`requeues`,
 * when the entry has one): built under a .tmp name and renamed, so an out.<conn>/ that
 * exists is always complete. */
static void router_prepare_out(struct spool_entry *e, const char *conn, const struct envelope *sub,
                               const char *src)
{
	char tmp[128], fin[128];
	snprintf(tmp, sizeof tmp, ENTRY_OUT_PREFIX "%s.tmp", conn);
	snprintf(fin, sizeof fin, ENTRY_OUT_PREFIX "%s", conn);
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
	int r = linkat(e->fd, src, ofd, ENTRY_MESSAGE, 0);
	/* The trace is a record for people, never trusted: one this user may not link (gone,
	 * or made unwritable to us by its owner: protected_hardlinks) must not stop the
	 * delivery, or one entry would stop the router at every restart. The outbox entry
	 * then starts a trace of its own that says so. */
	if (r == 0 && linkat(e->fd, ENTRY_TRACE, ofd, ENTRY_TRACE, 0) < 0)
		trace_add(ofd, e->qid, "router trace_not_linked error=%s", strerror(errno));
	if (r == 0)
		r = write_file_replace(ofd, ENTRY_ENVELOPE, b.data, b.len, 0640);
	/* The fleet's pass goes with the entry: the connector's records are keyed in it, and
	 * a bounce's badmail/ entry requeued counts on from it (lib/export.c). */
	if (r == 0)
		r = export_pass_copy(e->fd, ofd);
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
void router_fanout_finish(struct spool_entry *e)
{
	struct buf b;
	buf_init(&b);
	/* Only our own plan (trust by ownership): one that another user slipped in after
	 * router_untrusted looked is refused here, and seen by it at the next claim. */
	if (read_file_owned_at(e->fd, ENTRY_FANOUT, &b, 1 << 20, geteuid(), NULL) < 0)
		die_temp(e->qid, "cannot read fanout: %s", strerror(errno));
	char *line = b.data, *nl;
	int moved = 0;
	while (line && (nl = strchr(line, '\n')) != NULL) {
		*nl = '\0';
		if (strcmp(line, "end") == 0)
			break;
		char sub[128];
		snprintf(sub, sizeof sub, ENTRY_OUT_PREFIX "%s", line);
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
	if (spool_entry_write(e, ENTRY_FANOUT, plan.data, plan.len) < 0 || spool_entry_sync(e) < 0)
		die_temp(e->qid, "cannot write fanout: %s", strerror(errno));
	buf_free(&plan);
	CRASH_POINT("route-fanout-plan");
	router_fanout_finish(e);
}

/* Without a committed plan, out.* and derived* are debris of an interrupted
 * preparation. */
void router_drop_outs(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		die_temp(e->qid, "cannot list the work directory: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		if ((strncmp(names[i], ENTRY_OUT_PREFIX, strlen(ENTRY_OUT_PREFIX)) == 0 ||
		     strncmp(names[i], ENTRY_DERIVED, strlen(ENTRY_DERIVED)) == 0) &&
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

/* Header-safe text: printable ASCII only, bounded, so nothing a scanner printed can
 * start a new header line. */
void router_hdr_text(struct buf *h, const char *s, size_t max)
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

/* The message is mapped, not read (router_map): it may be as large as max_message_size. Every
 * page touched through the mapping would stay in the router's resident set until the
 * unmap, so the walks below drop what they have passed, a MiB at a time
 * (MADV_DONTNEED on a read-only file mapping only drops this process's page table entries;
 * a page touched again is read back from the page cache): the router's peak RSS stays a
 * few MiB whatever the message's size, not the message's size. */
#define ROUTER_MAP_STEP ((size_t)1 << 20)

struct router_src {
	const char *p;
	int mapped; /* p is a page-aligned mapping: the walks may drop what they passed */
};

/* Drop the whole pages of p[from..to) from the resident set (a mapping only; the page
 * holding p[to] stays, it is still in use). */
static void router_src_drop(const struct router_src *s, size_t from, size_t to)
{
	if (!s->mapped)
		return;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t a = from / pg * pg, end = to / pg * pg;
	/* Only a memory hint: on failure the pages stay resident until the unmap. */
	if (end > a)
		(void)madvise((void *)(s->p + a), end - a, MADV_DONTNEED);
}

/* write_all of p[from..to), a MiB at a time, dropping each MiB once written. */
static int router_src_write(int fd, const struct router_src *s, size_t from, size_t to)
{
	while (from < to) {
		size_t n = to - from < ROUTER_MAP_STEP ? to - from : ROUTER_MAP_STEP;
		if (write_all(fd, s->p + from, n) < 0)
			return -1;
		router_src_drop(s, from, from + n);
		from += n;
	}
	return 0;
}

/* Copy the message to fd (or only count, if fd < 0) without the X-Virus-Scanned and
 * X-Virus-Scan-Warning fields of its top-level header block, their folded continuation
 * lines included. A sender's forged "X-Virus-Scanned: Clean" must never be what a
 * downstream filter trusts: only the router says whether mail was scanned. The header
 * block ends at the first empty line ("\n" or "\r\n"); every other byte is copied as it
 * is, in as many writes as fields removed plus one, so no buffer grows with the input.
 * Returns the number of fields removed, or -1 with errno on a write error. */
static long router_copy_unforged(int fd, const char *msg, size_t len, int mapped)
{
	struct router_src s = {.p = msg, .mapped = mapped};
	size_t i = 0, keep = 0, passed = 0;
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
			if (fd >= 0 && i > keep && router_src_write(fd, &s, keep, i) < 0)
				return -1;
			keep = next;
		}
		i = next;
		/* A header block may be the whole message (no empty line): drop what the walk
		 * passed (a page still to be written is read back when it is). */
		if (i - passed >= ROUTER_MAP_STEP) {
			router_src_drop(&s, passed, i);
			passed = i;
		}
	}
	if (fd >= 0 && len > keep && router_src_write(fd, &s, keep, len) < 0)
		return -1;
	return removed;
}

/* Write message.out: hdrs, then msg[0..len) without forged scan headers. It is made
 * durable with the rest of the fan-out by the fanout commit's sync, before any
 * out.<conn>/ leaves for an outbox. */
static void router_write_out(struct spool_entry *e, const struct buf *hdrs, const char *msg,
                             size_t len, int mapped)
{
	/* Ours and new: the delivered copy must belong to the router's user alone. */
	int out = open_fresh_at(e->fd, ENTRY_MESSAGE_OUT_TMP, O_WRONLY, 0640);
	if (out < 0 || write_all(out, hdrs->data, hdrs->len) < 0 ||
	    router_copy_unforged(out, msg, len, mapped) < 0)
		goto fail;
	if (close(out) < 0) {
		out = -1;
		goto fail;
	}
	if (renameat(e->fd, ENTRY_MESSAGE_OUT_TMP, e->fd, ENTRY_MESSAGE_OUT) < 0)
		die_temp(e->qid, "cannot rename %s/route/%s/message.out.tmp: %s", e->sp->root,
		         e->qid, strerror(errno));
	return;
fail:
	die_temp(e->qid, "cannot write %s/route/%s/message.out: %s", e->sp->root, e->qid,
	         strerror(errno));
}

/* Map the whole of fd read-only and close it: MAP_FAILED (and *len 0) for an empty file.
 * Mapped, not read: only the header block is looked at, and the copy into message.out
 * drops what it has written (router_src_write). */
static void *router_map(struct spool_entry *e, int fd, size_t *len)
{
	struct stat st;
	void *map = MAP_FAILED;
	*len = 0;
	if (fstat(fd, &st) < 0)
		die_temp(e->qid, "cannot stat the message of %s/route/%s: %s", e->sp->root, e->qid,
		         strerror(errno));
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED)
			die_temp(e->qid, "cannot map the message of %s/route/%s: %s", e->sp->root,
			         e->qid, strerror(errno));
		*len = (size_t)st.st_size;
	}
	close(fd);
	return map;
}

/* The one way mail leaves with headers of ours: every delivery (clean, stripped, released,
 * unscanned after max_hold_time) comes here, so forged scan headers are removed on every
 * path. vs is NULL when nothing was scanned clean (a release, an unscanned delivery):
 * then there is no X-Virus-Scanned, whatever add_scanned_header says, only extra_hdr
 * (the NOT SCANNED warning) if given. body replaces the message when given (strip). */
void router_deliver_scanned(struct stage *st, struct spool_entry *e, const struct envelope *env,
                            const struct verdicts *vs, const char *extra_hdr,
                            const struct buf *body)
{
	struct buf h;
	const char *src = "";
	size_t len = 0;
	void *map = MAP_FAILED;
	struct stat sb = {.st_uid = geteuid()};
	buf_init(&h);
	if (body) {
		src = body->data ? body->data : "";
		len = body->len;
	} else if (vs && vs->msg_sha256) {
		/* The runner scanned a copy with this hash (a separated spool): copy the message
		 * into a file of ours, hashing exactly the bytes copied, and deliver from that
		 * copy if they are the scanned bytes, so that what leaves is what was scanned,
		 * whatever the message's owner does to its file now. A copy, not memory: a
		 * message may be as large as max_message_size. */
		char hex[65] = "not-a-file";
		int in =
		    openat(e->fd, ENTRY_MESSAGE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
		if (in < 0 || fstat(in, &sb) < 0)
			die_temp(e->qid, "cannot open %s/route/%s/message: %s", e->sp->root, e->qid,
			         strerror(errno));
		/* Not a regular file (a FIFO would block the copy): never what was scanned, and
		 * hex stays "not-a-file". message.out.tmp is only a scratch name here, unlinked
		 * at once: router_write_out makes it anew. */
		int cp = S_ISREG(sb.st_mode)
		             ? open_fresh_at(e->fd, ENTRY_MESSAGE_OUT_TMP, O_RDWR, 0600)
		             : -2;
		if (cp == -1 || (cp >= 0 && copy_fd_sha256(in, cp, hex) < 0))
			die_temp(e->qid, "cannot copy %s/route/%s/message: %s", e->sp->root, e->qid,
			         strerror(errno));
		close(in);
		if (cp >= 0 && unlinkat(e->fd, ENTRY_MESSAGE_OUT_TMP, 0) < 0)
			die_temp(e->qid, "cannot remove %s/route/%s/message.out.tmp: %s",
			         e->sp->root, e->qid, strerror(errno));
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
			if (cp >= 0)
				close(cp);
			buf_free(&h);
			return;
		}
		/* The unlinked copy stays readable through cp and then the mapping. */
		map = router_map(e, cp, &len);
		src = map != MAP_FAILED ? map : "";
		sb.st_uid = (uid_t)-1; /* never linked: delivered from the checked bytes */
	} else {
		/* The entry is locked, so nobody else of our user changes the message. */
		int fd = openat(e->fd, ENTRY_MESSAGE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &sb) < 0)
			die_temp(e->qid, "cannot open %s/route/%s/message: %s", e->sp->root, e->qid,
			         strerror(errno));
		map = router_map(e, fd, &len);
		src = map != MAP_FAILED ? map : "";
	}
	/* The line end of the first line; a first line longer than 64 KiB (never a header
	 * field) is not looked through to its end. */
	const char *eol = strip_eol(src, len < 65536 ? len : 65536);
	if (extra_hdr)
		buf_printf(&h, "%s%s", extra_hdr, eol);
	if (vs && st->conf->router.add_scanned_header)
		router_scanned_header(vs, eol, &h);
	long forged = router_copy_unforged(-1, src, len, map != MAP_FAILED);
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
		router_write_out(e, &h, src, len, map != MAP_FAILED);
		router_deliver(st, e, env, ENTRY_MESSAGE_OUT);
	} else {
		router_deliver(st, e, env, ENTRY_MESSAGE);
	}
	if (map != MAP_FAILED && munmap(map, len) < 0)
		log_warn(e->qid, "cannot unmap the message: %s", strerror(errno));
	buf_free(&h);
}
