/*
 * outbox - see outbox.h.
 */
#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "entry_names.h"
#include "util.h"

int outbox_entry_claim(struct spool *sp, int dirfd, const char *conn, const char *qid,
                       struct outbox_entry *e)
{
	if (!spool_qid_valid(qid)) {
		errno = EINVAL;
		return -1;
	}
	int fd = spool_lock_at(dirfd, qid);
	if (fd < 0)
		return errno == ENOENT || errno == EWOULDBLOCK ? 0 : -1;
	e->sp = sp;
	e->dirfd = dirfd;
	e->fd = fd;
	snprintf(e->conn, sizeof e->conn, "%s", conn);
	memcpy(e->qid, qid, SPOOL_QID_LEN + 1);
	return 1;
}

void outbox_entry_release(struct outbox_entry *e)
{
	if (e->fd >= 0)
		close(e->fd);
	e->fd = -1;
}

void outbox_state_read(struct outbox_entry *e, struct outbox_state *st)
{
	struct buf b, v;
	buf_init(&b);
	buf_init(&v);
	memset(st, 0, sizeof *st);
	if (read_file_at(e->fd, ENTRY_DELIVER, &b, 8192) == 0) {
		const char *s = buf_cstr(&b);
		if (kv_find(s, "attempts", &v) == 0)
			parse_u64(buf_cstr(&v), &st->attempts);
		if (kv_find(s, "first", &v) == 0)
			parse_u64(buf_cstr(&v), &st->first);
		if (kv_find(s, "next", &v) == 0)
			parse_u64(buf_cstr(&v), &st->next);
	}
	buf_free(&b);
	buf_free(&v);
}

/* The retry state as a "deliver" file, atomic and durable. */
static int outbox_state_write(struct outbox_entry *e, const struct outbox_state *st,
                              const char *reply)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "deliver attempts=%llu first=%llu next=%llu",
	           (unsigned long long)st->attempts, (unsigned long long)st->first,
	           (unsigned long long)st->next);
	kv_addstr(&b, "last", reply);
	buf_addstr(&b, "\n");
	/* Atomic and durable: a restarted connector must keep the back-off schedule. */
	int r = write_file_atomic(e->fd, ENTRY_DELIVER, b.data, b.len, 0640);
	if (r == 0)
		r = fsync_dir(e->fd);
	buf_free(&b);
	return r;
}

int outbox_defer(struct outbox_entry *e, struct outbox_state *st, int min, int max,
                 const char *reply)
{
	uint64_t now = (uint64_t)time(NULL);
	if (st->first == 0)
		st->first = now;
	st->attempts++;
	uint64_t delay = (uint64_t)min;
	for (uint64_t i = 1; i < st->attempts && delay < (uint64_t)max; i++)
		delay *= 2;
	if (delay > (uint64_t)max)
		delay = (uint64_t)max;
	delay += (uint64_t)(rand() % (int)(delay / 4 + 1));
	st->next = now + delay;
	return outbox_state_write(e, st, reply);
}

int outbox_retry_now(struct outbox_entry *e)
{
	struct outbox_state st;
	outbox_state_read(e, &st);
	if (st.next == 0)
		return 0; /* never deferred: nothing to bring forward */
	struct buf b, last;
	buf_init(&b);
	buf_init(&last);
	if (read_file_at(e->fd, ENTRY_DELIVER, &b, 8192) == 0)
		kv_find(buf_cstr(&b), "last", &last);
	/* attempts and first stay: max_age still counts from the first attempt. */
	st.next = 0;
	int r = outbox_state_write(e, &st, buf_cstr(&last));
	buf_free(&b);
	buf_free(&last);
	return r;
}

int outbox_done(struct outbox_entry *e)
{
	char name[SPOOL_QID_LEN + 80];
	snprintf(name, sizeof name, "%s.%s", e->qid, e->conn);
	/* One rename takes the whole entry out of the outbox: a half-removed entry is only
	 * ever seen in trash/, never as something to deliver again. */
	if (renameat(e->dirfd, e->qid, e->sp->fd[SD_TRASH], name) < 0)
		return -1;
	if (fsync_dir(e->dirfd) < 0)
		return -1;
	return remove_tree_at(e->sp->fd[SD_TRASH], name);
}

int outbox_bounce(struct outbox_entry *e, const char *reason)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "connector %s: %s\n", e->conn, reason);
	int r = write_file_atomic(e->fd, ENTRY_REASON, b.data, b.len, 0640);
	if (r == 0)
		r = fsync_dir(e->fd);
	if (r == 0) {
		if (renameat(e->dirfd, e->qid, e->sp->fd[SD_BADMAIL], e->qid) == 0) {
			r = fsync_dir(e->sp->fd[SD_BADMAIL]);
			if (r == 0)
				r = fsync_dir(e->dirfd);
		} else if (errno == EEXIST || errno == ENOTEMPTY) {
			/* The same message bounced on another connector already: keep one copy in
			 * badmail/, with both reasons. */
			int bfd = openat(e->sp->fd[SD_BADMAIL], e->qid,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			int afd =
			    bfd < 0 ? -1
			            : openat(bfd, ENTRY_REASON,
			                     O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
			                     0640);
			r = afd < 0 || write_all(afd, b.data, b.len) < 0 || fsync(afd) < 0 ? -1 : 0;
			if (afd >= 0)
				close(afd);
			if (bfd >= 0)
				close(bfd);
			if (r == 0)
				r = outbox_done(e);
		} else {
			r = -1;
		}
	}
	int err = errno;
	buf_free(&b);
	errno = err;
	return r;
}
