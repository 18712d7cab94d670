/*
 * mime_out - part files: open NNNN.ATT, write with every limit checked before the
 * bytes go out, hash while writing (sha256), close into the manifest.
 * The contract of the extractor is in mime.h; what the files share, in mime_int.h.
 */
#include "mime_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <nettle/sha2.h>

#include "log.h"
#include "util.h"

int mime_fail(struct mime_ctx *c, const char *what, const char *name)
{
	int e = errno;
	snprintf(c->reason, c->rlen, "%s %s: %s", what, name, strerror(e));
	errno = e;
	return -1;
}

/* ---- sha256 ---------------------------------------------------------------------- */

/* Nettle's sha256 rather than GChecksum: it uses the CPU's SHA instructions where there
 * are some, 4x GLib's speed here, and every byte of every part is hashed. (OpenSSL is as
 * fast but costs over a millisecond of loading and set-up in every process.) */
void mime_sha_hex(struct sha256_ctx *x, char hex[65])
{
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_digest(x, sizeof d, d);
	for (size_t i = 0; i < sizeof d; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* ---- part files ------------------------------------------------------------------ */

void mime_out_reset(struct mime_out *o)
{
	o->fd = -1;
	o->index = 0;
	o->size = 0;
	o->full = 0;
}

int mime_limit_parts(struct mime_ctx *c)
{
	if (c->stop)
		return 1;
	if (c->m->n_parts >= c->content_max) {
		manifest_add_unscannable(c->m, MIME_OVER("max_parts"));
		return 1;
	}
	return 0;
}

/* Copy at most max bytes of s, lower-cased if lower. */
char *mime_field(const char *s, size_t max, int lower)
{
	if (s == NULL)
		return xstrdup("");
	size_t n = strnlen(s, max);
	char *p = xstrndup(s, n);
	if (lower)
		for (char *q = p; *q; q++)
			if (*q >= 'A' && *q <= 'Z')
				*q = (char)(*q - 'A' + 'a');
	return p;
}

/* Add a manifest entry and create its file. 0: open; 1: skipped by a limit (o->fd is
 * -1, the unscannable mark is set); -1: I/O error. */
int mime_out_open(struct mime_ctx *c, struct mime_out *o, const char *path, enum part_found found,
                  const char *type, const char *charset, const char *cte, const char *filename)
{
	mime_out_reset(o);
	if (mime_limit_parts(c))
		return 1;
	const char *fn = filename ? filename : "";
	struct manifest_part *p =
	    manifest_add(c->m, path, found, type, charset, cte, fn, strnlen(fn, MIME_FILENAME_MAX));
	char name[16];
	manifest_part_name(p->index, name);
	/* O_EXCL|O_NOFOLLOW: a leftover or planted name is an error, never followed. */
	o->fd = openat(c->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (o->fd < 0)
		return mime_fail(c, "create", name);
	o->index = p->index;
	sha256_init(&o->sha);
	return 0;
}

/* Write decoded bytes, enforcing max_part_size and max_total_size before writing. */
int mime_out_write(struct mime_ctx *c, struct mime_out *o, const void *data, size_t n)
{
	if (o->fd < 0 || o->full || n == 0)
		return 0;
	const struct mime_limits *lim = c->lim;
	uint64_t allow = n;
	if (o->size + allow > lim->max_part_size) {
		allow = lim->max_part_size > o->size ? lim->max_part_size - o->size : 0;
		o->full = 1;
		manifest_add_unscannable(c->m, MIME_OVER("max_part_size"));
	}
	if (c->total + allow > c->total_max) {
		allow = c->total_max > c->total ? c->total_max - c->total : 0;
		o->full = 1;
		c->stop = 1;
		manifest_add_unscannable(c->m, c->total_why);
	}
	if (allow == 0)
		return 0;
	/* Count what we write against the free space, not only against the limits: a full
	 * disk must defer this message (ENOSPC: the caller pauses intake and retries it),
	 * not fill the spool that every other message needs. */
	if (lim->min_free > 0 && c->unchecked + allow > MIME_SPACE_STEP) {
		struct statvfs vs;
		if (fstatvfs(c->dirfd, &vs) < 0)
			return mime_fail(c, "statvfs", "work directory");
		uint64_t avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
		if (avail < lim->min_free + allow) {
			errno = ENOSPC;
			return mime_fail(c, "write parts in", "work directory");
		}
		c->unchecked = 0;
	}
	c->unchecked += allow;
	if (write_all(o->fd, data, (size_t)allow) < 0) {
		char name[16];
		manifest_part_name(o->index, name);
		return mime_fail(c, "write", name);
	}
	sha256_update(&o->sha, (size_t)allow, data);
	o->size += allow;
	c->total += allow;
	return 0;
}

int mime_out_close(struct mime_ctx *c, struct mime_out *o)
{
	if (o->fd < 0)
		return 0;
	struct manifest_part *p = &c->m->parts[o->index - 1];
	p->size = o->size;
	mime_sha_hex(&o->sha, p->sha256);
	int rc = close(o->fd);
	o->fd = -1;
	if (rc < 0) {
		char name[16];
		manifest_part_name(o->index, name);
		return mime_fail(c, "close", name);
	}
	return 0;
}

/* On an error path: close without caring (the caller retries from scratch). */
void mime_out_abort(struct mime_out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	mime_out_reset(o);
}
