/*
 * export - see export.h and docs/FLEET.md.
 */
#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "entry_names.h"
#include "envelope.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "verdict.h"

#define EXPORT_VALUE_MAX   512 /* input bytes of one value; escaped it is at most 4x */
#define EXPORT_RCPTS_MAX   100 /* recipients listed in a record; the rest are counted */
#define EXPORT_VIRUSES_MAX 20
#define EXPORT_HEAD_MAX    65536 /* header bytes read for Subject and Message-ID */

static const struct {
	int kind;
	const char *state;
} export_kinds[] = {
    {EXPORT_INTAKE, "intake"},         {EXPORT_SCANNED, "scanned"},     {EXPORT_OUTBOX, "outbox"},
    {EXPORT_QUARANTINE, "quarantine"}, {EXPORT_HOLD, "hold"},           {EXPORT_BADMAIL, "badmail"},
    {EXPORT_DISCARD, "discarded"},     {EXPORT_RELEASED, "released"},   {EXPORT_DELETED, "deleted"},
    {EXPORT_EXPIRED, "expired"},       {EXPORT_DELIVERED, "delivered"}, {EXPORT_BOUNCED, "bounced"},
};

const char *export_kind_state(int kind)
{
	for (size_t i = 0; i < ARRAY_LEN(export_kinds); i++)
		if (export_kinds[i].kind == kind)
			return export_kinds[i].state;
	log_panic("export_kind_state: unknown kind %d", kind);
}

int export_state_kind(const char *state)
{
	for (size_t i = 0; i < ARRAY_LEN(export_kinds); i++)
		if (strcmp(export_kinds[i].state, state) == 0)
			return export_kinds[i].kind;
	return -1;
}

int64_t export_seq(int kind, uint64_t round, int conn_index)
{
	(void)export_kind_state(kind); /* panics on an unknown kind */
	int64_t s = (int64_t)round * EXPORT_ROUND + kind;
	if (kind == EXPORT_DELIVERED || kind == EXPORT_BOUNCED)
		s += conn_index < 0                 ? 0
		     : conn_index < EXPORT_CONN_MAX ? conn_index
		                                    : EXPORT_CONN_MAX - 1;
	return s;
}

int export_dir_open(struct spool *sp, int create)
{
	int fd = openat(sp->root_fd, "export", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 || errno != ENOENT || !create)
		return fd;
	if (mkdirat(sp->root_fd, "export", 02770) < 0 && errno != EEXIST)
		return -1;
	/* The directory must exist after a crash before a record is renamed into it. */
	if (fsync_dir(sp->root_fd) < 0)
		return -1;
	return openat(sp->root_fd, "export", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

int export_name_parse(const char *name, char qid[SPOOL_QID_LEN + 1], int64_t *seq)
{
	if (strlen(name) < SPOOL_QID_LEN + 2 || name[SPOOL_QID_LEN] != '.')
		return 0;
	memcpy(qid, name, SPOOL_QID_LEN);
	qid[SPOOL_QID_LEN] = '\0';
	uint64_t v;
	if (!spool_qid_valid(qid) || parse_u64(name + SPOOL_QID_LEN + 1, &v) < 0 ||
	    v > INT64_MAX / 2)
		return 0;
	*seq = (int64_t)v;
	return 1;
}

long export_backlog(int exportfd, int64_t *oldest_time)
{
	int fd = openat(exportfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		close_keep_errno(fd);
		return -1;
	}
	long n = 0;
	int64_t oldest = 0;
	struct dirent *de;
	char qid[SPOOL_QID_LEN + 1];
	int64_t seq;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !export_name_parse(de->d_name, qid, &seq))
			continue;
		n++;
		if (oldest_time) {
			/* The queue ID starts with the microseconds of the intake: the oldest
			 * record waiting is at least as old as its message. */
			char hex[15];
			memcpy(hex, qid, 14);
			hex[14] = '\0';
			int64_t us = (int64_t)strtoll(hex, NULL, 16);
			if (oldest == 0 || us / 1000000 < oldest)
				oldest = us / 1000000;
		}
	}
	closedir(d);
	if (oldest_time)
		*oldest_time = oldest;
	return n;
}

/* The cap: counted again at most once a second per process, and counted up by what this
 * process wrote in between, so a node without a database costs one readdir a second,
 * not one per message. Near the cap (90 %) it is counted before every record: only
 * writers racing at the very edge can pass it, by one record each. */
static int export_over_cap(const struct conf *c, int exportfd)
{
	static int64_t counted_ms = -1;
	static long count;
	int64_t now = now_ms_monotonic();
	if (counted_ms < 0 || now - counted_ms >= 1000 ||
	    count >= c->fleet.max_backlog - c->fleet.max_backlog / 10 - 1) {
		long n = export_backlog(exportfd, NULL);
		count = n < 0 ? 0 : n;
		counted_ms = now;
	}
	if (count >= c->fleet.max_backlog)
		return 1;
	count++;
	return 0;
}

static void export_drop(const char *qid, const char *why, const char *what)
{
	static int64_t logged_ms = -1;
	char labels[64];
	snprintf(labels, sizeof labels, "why=\"%s\"", why);
	metrics_inc("spoold_export_dropped_total", labels, 1);
	/* One line a minute at most: a node without a database drops every record. */
	int64_t now = now_ms_monotonic();
	if (logged_ms < 0 || now - logged_ms >= 60000) {
		log_error(qid, "fleet: event record dropped (%s): %s", why, what);
		logged_ms = now;
	}
}

static void export_kv(struct buf *b, const char *key, const char *val, size_t n)
{
	buf_printf(b, "%s ", key);
	text_escape(b, val, n, EXPORT_VALUE_MAX);
	buf_addstr(b, "\n");
}

/* The pass of a work directory: the count of its `requeues` file, else 0. Bounded so
 * that a seq stays far inside what export_name_parse takes. */
static uint64_t export_pass(int dirfd)
{
	struct buf b;
	buf_init(&b);
	unsigned long long n = 0;
	if (read_file_at(dirfd, ENTRY_REQUEUES, &b, 64) == 0)
		n = strtoull(buf_cstr(&b), NULL, 10);
	buf_free(&b);
	return n > 1000000000 ? 1000000000 : (uint64_t)n;
}

/* The round of a work directory: its pass, then the attempts of its `hold` file (else
 * 0). */
static uint64_t export_round(int dirfd)
{
	struct buf b;
	buf_init(&b);
	unsigned long long a = 0;
	if (read_file_at(dirfd, ENTRY_HOLD, &b, 4096) == 0) {
		const char *p = strstr(buf_cstr(&b), "attempts=");
		if (p)
			a = strtoull(p + 9, NULL, 10);
	}
	buf_free(&b);
	return export_pass(dirfd) * EXPORT_PASS_ROUNDS + (a > 100000 ? 100000 : a);
}

/* Subject, Message-ID and From of the message's header (unfolded, bounded). */
static void export_headers(int dirfd, struct buf *out, int64_t *size)
{
	int fd = openat(dirfd, ENTRY_MESSAGE_BODY, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		fd = openat(dirfd, ENTRY_MESSAGE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		*size = (int64_t)st.st_size;
	char *h = xmalloc(EXPORT_HEAD_MAX + 1);
	ssize_t n = S_ISREG(st.st_mode) ? pread_full(fd, h, EXPORT_HEAD_MAX, 0) : -1;
	close(fd);
	static const char *const want[] = {"subject", "message_id", "from"};
	static const char *const names[] = {"Subject:", "Message-ID:", "From:"};
	for (size_t w = 0; n > 0 && w < ARRAY_LEN(want); w++) {
		size_t nl = strlen(names[w]);
		for (ssize_t i = 0; i < n;) {
			ssize_t e = i;
			while (e < n && h[e] != '\n')
				e++;
			if (e == i || (e == i + 1 && h[i] == '\r'))
				break; /* the end of the header */
			if (e - i >= (ssize_t)nl && strncasecmp(h + i, names[w], nl) == 0) {
				/* Unfold: the continuation lines join with one space. */
				struct buf v;
				buf_init(&v);
				ssize_t p = i + (ssize_t)nl;
				for (;;) {
					while (p < e && (h[p] == ' ' || h[p] == '\t'))
						p++;
					ssize_t q = e;
					if (q > p && h[q - 1] == '\r')
						q--;
					buf_add(&v, h + p, (size_t)(q - p));
					if (e + 1 < n && (h[e + 1] == ' ' || h[e + 1] == '\t') &&
					    v.len < EXPORT_VALUE_MAX) {
						p = e + 1;
						e = p;
						while (e < n && h[e] != '\n')
							e++;
						buf_addstr(&v, " ");
						continue;
					}
					break;
				}
				export_kv(out, want[w], v.data ? v.data : "", v.len);
				buf_free(&v);
				break;
			}
			i = e + 1;
		}
	}
	free(h);
}

static void export_envelope(int dirfd, struct buf *out, int with_sender)
{
	struct envelope env;
	char reason[256];
	envelope_init(&env);
	if (envelope_read_at(dirfd, &env, reason, sizeof reason) == 0) {
		if (with_sender)
			export_kv(out, "sender", env.sender, strlen(env.sender));
		for (size_t i = 0; i < env.n_rcpts && i < EXPORT_RCPTS_MAX; i++)
			export_kv(out, "rcpt", env.rcpts[i], strlen(env.rcpts[i]));
		if (env.n_rcpts > EXPORT_RCPTS_MAX)
			buf_printf(out, "rcpts_more %zu\n", env.n_rcpts - EXPORT_RCPTS_MAX);
	}
	envelope_free(&env);
}

/* The verdict summary: class clean, virus or unscanned (an error line: the router holds
 * it), and the virus names. */
static void export_verdicts(int dirfd, struct buf *out)
{
	struct verdicts vs;
	char reason[256];
	verdicts_init(&vs);
	if (verdicts_read_at(dirfd, &vs, reason, sizeof reason) < 0) {
		buf_addstr(out, "class unscanned\n");
		verdicts_free(&vs);
		return;
	}
	int infected = 0, error = 0;
	size_t listed = 0;
	for (size_t i = 0; i < vs.n; i++) {
		if (vs.lines[i].verdict == V_INFECTED) {
			infected = 1;
			if (listed++ < EXPORT_VIRUSES_MAX)
				export_kv(out, "virus", vs.lines[i].virus,
				          strlen(vs.lines[i].virus));
		} else if (vs.lines[i].verdict != V_CLEAN) {
			error = 1;
		}
	}
	buf_printf(out, "class %s\n", infected ? "virus" : error ? "unscanned" : "clean");
	verdicts_free(&vs);
}

/* The content class a routing reason implies (report reasons, docs/INTERNALS.md). */
static const char *export_reason_class(const char *detail)
{
	if (detail == NULL)
		return NULL;
	if (strncmp(detail, "infected", 8) == 0)
		return "virus";
	if (strncmp(detail, "banned", 6) == 0)
		return "banned";
	if (strncmp(detail, "unscannable", 11) == 0 || strncmp(detail, "held-too-long", 13) == 0)
		return "unscannable";
	return NULL;
}

static int export_conn_index(const struct conf *c, const char *conn)
{
	for (size_t i = 0; conn && i < c->n_connectors; i++)
		if (strcmp(c->connectors[i].name, conn) == 0)
			return (int)i;
	return 0;
}

static void export_format(const struct conf *c, int dirfd, const char *qid, int kind, int64_t seq,
                          const char *conn, const char *detail, struct buf *b)
{
	/* Microseconds: a release and the routing that follows it fall in one second, and
	 * the database orders a message's events by time. */
	int64_t us = now_us_wall();
	buf_printf(b, "spoold-event 1\nnode %s\nqid %s\nseq %lld\nkind %s\ntime %lld.%06lld\n",
	           c->fleet.node, qid, (long long)seq, export_kind_state(kind),
	           (long long)(us / 1000000), (long long)(us % 1000000));
	int64_t size = -1;
	switch (kind) {
	case EXPORT_INTAKE:
	case EXPORT_BADMAIL: /* a splitter's badmail never had an intake record */
		export_envelope(dirfd, b, 1);
		export_headers(dirfd, b, &size);
		if (size >= 0)
			buf_printf(b, "size %lld\n", (long long)size);
		break;
	case EXPORT_SCANNED:
		export_verdicts(dirfd, b);
		break;
	case EXPORT_DELIVERED:
	case EXPORT_BOUNCED:
		export_envelope(dirfd, b, 0);
		break;
	case EXPORT_QUARANTINE: {
		const char *cl = export_reason_class(detail);
		if (cl)
			buf_printf(b, "class %s\n", cl);
		break;
	}
	default:
		break;
	}
	if (conn)
		export_kv(b, "conn", conn, strlen(conn));
	if (detail)
		export_kv(b, "detail", detail, strlen(detail));
	buf_addstr(b, "end\n");
}

int export_event(const struct conf *c, struct spool *sp, int dirfd, const char *qid, int kind,
                 const char *conn, const char *detail, int flags)
{
	if (!c->fleet.enabled)
		return 0;
	static int exportfd = -1;
	if (exportfd < 0 && (exportfd = export_dir_open(sp, 0)) < 0) {
		export_drop(qid, "error", strerror(errno));
		return 0;
	}
	if (export_over_cap(c, exportfd)) {
		export_drop(qid, "cap", "export/ holds fleet.max_backlog records");
		return 0;
	}
	int64_t seq = export_seq(kind, export_round(dirfd), export_conn_index(c, conn));
	char name[64], tmp[96];
	snprintf(name, sizeof name, "%s.%lld", qid, (long long)seq);
	snprintf(tmp, sizeof tmp, ".%s.%ld.tmp", name, (long)getpid());
	struct buf b;
	buf_init(&b);
	export_format(c, dirfd, qid, kind, seq, conn, detail, &b);
	int ok = 0;
	int fd = openat(exportfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0660);
	if (fd >= 0) {
		ok = write_all(fd, b.data, b.len) == 0 &&
		     (!(flags & EXPORT_SYNC) || fdatasync(fd) == 0);
		if (close(fd) < 0)
			ok = 0;
	}
	/* The rename makes the record appear whole; a redo of the same transition writes
	 * the same name, and the rename replaces the earlier record of that redo. */
	if (ok && renameat(exportfd, tmp, exportfd, name) < 0)
		ok = 0;
	/* Without a commit sync of the caller's: the name must be durable before the state
	 * change it records is. */
	if (ok && (flags & EXPORT_SYNC) && fsync_dir(exportfd) < 0)
		ok = 0;
	buf_free(&b);
	if (!ok) {
		char what[256];
		snprintf(what, sizeof what, "export/%s: %s", name, strerror(errno));
		unlinkat(exportfd, tmp, 0);
		export_drop(qid, "error", what);
		return 0;
	}
	return 1;
}

int export_requeued(const struct conf *c, struct spool_entry *e)
{
	if (c == NULL || !c->fleet.enabled)
		return 0;
	char line[32];
	int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)export_pass(e->fd) + 1);
	if (spool_entry_write(e, ENTRY_REQUEUES, line, (size_t)n) < 0)
		return -1;
	e->synced = 0; /* the commit move syncs the count before it renames */
	return 0;
}

int export_pass_copy(int from_dirfd, int to_dirfd)
{
	uint64_t pass = export_pass(from_dirfd);
	if (pass == 0)
		return 0;
	/* Written from the parsed, bounded count, not copied: the outbox side reads exactly
	 * the pass the router's records used. */
	char line[32];
	int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)pass);
	return write_file_replace(to_dirfd, ENTRY_REQUEUES, line, (size_t)n, 0640);
}

static const struct conf *export_conf;

void export_use(const struct conf *c)
{
	export_conf = c;
}

int export_entry(const struct conf *c, struct spool_entry *e, int kind, const char *detail)
{
	if (c == NULL && (c = export_conf) == NULL)
		return 0;
	int r = export_event(c, e->sp, e->fd, e->qid, kind, NULL, detail, 0);
	if (r == 1)
		e->synced = 0; /* the commit move syncs the record before it renames */
	return r;
}

static char **export_field(struct export_record *r, const char *key)
{
	static const char *const keys[] = {"node", "sender", "rcpt",  "subject", "message_id",
	                                   "from", "class",  "virus", "conn",    "detail"};
	char **slots[] = {&r->node, &r->sender, &r->rcpts,   &r->subject, &r->message_id,
	                  &r->from, &r->class,  &r->viruses, &r->conn,    &r->detail};
	for (size_t i = 0; i < ARRAY_LEN(keys); i++)
		if (strcmp(keys[i], key) == 0)
			return slots[i];
	return NULL;
}

/* "<seconds>.<microseconds>" (or plain seconds) to microseconds; -1 if malformed. */
static int64_t export_time_parse(const char *s)
{
	char sec[24];
	uint64_t a, b = 0;
	const char *dot = strchr(s, '.');
	size_t n = dot ? (size_t)(dot - s) : strlen(s);
	if (n == 0 || n >= sizeof sec)
		return -1;
	memcpy(sec, s, n);
	sec[n] = '\0';
	if (parse_u64(sec, &a) < 0 || a > INT64_MAX / 2000000 ||
	    (dot && (strlen(dot + 1) != 6 || parse_u64(dot + 1, &b) < 0)))
		return -1;
	return (int64_t)(a * 1000000 + b);
}

int export_record_parse(const char *data, size_t n, struct export_record *r)
{
	memset(r, 0, sizeof *r);
	r->size = -1;
	r->time_us = -1;
	r->kind = -1;
	if (n < 15 || memcmp(data, "spoold-event 1\n", 15) != 0 || data[n - 1] != '\n')
		return -1;
	int ended = 0, have_seq = 0;
	const char *p = data + 15, *end = data + n;
	while (p < end && !ended) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *sp = memchr(p, ' ', (size_t)(nl - p));
		if (nl - p == 3 && memcmp(p, "end", 3) == 0) {
			ended = nl + 1 == end;
			break;
		}
		if (sp == NULL || sp - p > 31) {
			export_record_free(r); /* what the lines before set */
			return -1;
		}
		char key[32];
		memcpy(key, p, (size_t)(sp - p));
		key[sp - p] = '\0';
		char *val = xstrndup(sp + 1, (size_t)(nl - sp - 1));
		char **slot = export_field(r, key);
		uint64_t u = 0;
		if (slot && *slot && (!strcmp(key, "rcpt") || !strcmp(key, "virus"))) {
			char *j = xasprintf("%s\n%s", *slot, val);
			free(*slot);
			free(val);
			*slot = j;
		} else if (slot) {
			free(*slot);
			*slot = val;
		} else {
			if (!strcmp(key, "qid") && strlen(val) == SPOOL_QID_LEN &&
			    spool_qid_valid(val))
				memcpy(r->qid, val, SPOOL_QID_LEN + 1);
			else if (!strcmp(key, "seq") && parse_u64(val, &u) == 0)
				r->seq = (int64_t)u, have_seq = 1;
			else if (!strcmp(key, "kind"))
				r->kind = export_state_kind(val);
			else if (!strcmp(key, "time"))
				r->time_us = export_time_parse(val);
			else if (!strcmp(key, "size") && parse_u64(val, &u) == 0)
				r->size = (int64_t)u;
			free(val);
		}
		p = nl + 1;
	}
	if (!ended || !have_seq || r->kind < 0 || r->qid[0] == '\0' || r->node == NULL ||
	    r->time_us < 0) {
		export_record_free(r);
		return -1;
	}
	return 0;
}

void export_record_free(struct export_record *r)
{
	char **f[] = {&r->node, &r->sender, &r->rcpts,   &r->subject, &r->message_id,
	              &r->from, &r->class,  &r->viruses, &r->conn,    &r->detail};
	for (size_t i = 0; i < ARRAY_LEN(f); i++) {
		free(*f[i]);
		*f[i] = NULL;
	}
}
