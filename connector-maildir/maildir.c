/*
 * connector-maildir - delivers outbox/<connector>/ entries into the connector's Maildir.
 *
 *   connector-maildir [-c CONFIG] -n CONNECTOR [--once]
 *
 * One Maildir per connector (its path comes from the config, never from a recipient
 * address). Delivery is the Maildir protocol: write tmp/<name>, fsync, rename to
 * new/<name>, fsync new/. The name is derived from the queue ID and the connector, so a
 * delivery interrupted after the rename is recognised (in new/ or, once read, in cur/)
 * and never made twice.
 *
 * The Maildir is opened once (O_DIRECTORY|O_NOFOLLOW) and everything below it is reached
 * with openat/renameat from that descriptor: a tmp/ or new/ swapped for a symlink later
 * defers the delivery (CONN_TEMP) and never redirects it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "connector.h"
#include "log.h"
#include "util.h"

/* The Maildir, opened once (at the first delivery) and used by descriptor from then on. A
 * Maildir is often writable by its reader: if tmp/ or new/ is later swapped for a symlink,
 * the openat(O_NOFOLLOW) of that subdirectory fails and the delivery is deferred; mail never
 * goes where a symlink points. */
static int maildir_fd = -1;

static int maildir_root(const char *root)
{
	struct stat st;
	/* A Maildir removed (and maybe made again) by its owner: open the new one, or mail
	 * would go into a deleted directory. */
	if (maildir_fd >= 0 && fstat(maildir_fd, &st) == 0 && st.st_nlink > 0)
		return maildir_fd;
	if (maildir_fd >= 0)
		close(maildir_fd);
	if (mkdir(root, 0700) < 0 && errno != EEXIST)
		return maildir_fd = -1;
	maildir_fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return maildir_fd;
}

/* Make tmp/, new/, cur/ if missing and open one of them, never through a symlink. */
static int maildir_sub(int mfd, const char *sub)
{
	if (mkdirat(mfd, sub, 0700) < 0 && errno != EEXIST)
		return -1;
	return openat(mfd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* 1 if a file named base (new/) or base:... (cur/, after a reader saw it) exists; -1 when
 * cur/ cannot be read. */
static int maildir_has(int newfd, int mfd, const char *base)
{
	struct stat st;
	if (fstatat(newfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 1;
	int cfd = maildir_sub(mfd, "cur");
	if (cfd < 0)
		return -1;
	DIR *d = fdopendir(cfd);
	if (d == NULL) {
		close(cfd);
		return -1;
	}
	size_t bl = strlen(base);
	int found = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, base, bl) == 0 &&
		    (de->d_name[bl] == ':' || !de->d_name[bl]))
			found = 1;
	closedir(d);
	return found;
}

static enum conn_result maildir_deliver(const struct conf_connector *cc, struct outbox_entry *e,
                                        const struct envelope *env, int msgfd, char *reply,
                                        size_t rlen)
{
	char host[256] = "localhost";
	gethostname(host, sizeof host - 1);
	for (char *h = host; *h; h++) /* '/' and ':' have meanings in Maildir names */
		if (*h == '/' || *h == ':')
			*h = '_';
	char base[512];
	snprintf(base, sizeof base, "%.14s.S%s_%s.%s", e->qid, e->qid, cc->name, host);
	enum conn_result res = CONN_TEMP;
	const char *where = cc->maildir;
	int fd = -1, tmpfd = -1, newfd = -1, tmp_made = 0;
	int mfd = maildir_root(cc->maildir);
	if (mfd < 0)
		goto fail;
	where = "tmp/ or new/ (not a directory, or a symlink: not followed)";
	if ((tmpfd = maildir_sub(mfd, "tmp")) < 0 || (newfd = maildir_sub(mfd, "new")) < 0)
		goto fail;
	where = cc->maildir;
	int has = maildir_has(newfd, mfd, base);
	if (has < 0)
		goto fail;
	if (has) {
		snprintf(reply, rlen, "already in %s (an earlier delivery was interrupted)",
		         cc->maildir);
		res = CONN_OK;
		goto out;
	}
	where = "tmp/";
	unlinkat(tmpfd, base, 0); /* debris of an interrupted attempt */
	fd = openat(tmpfd, base, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto fail;
	tmp_made = 1;
	/* Return-Path records the envelope sender, as local delivery agents do. */
	struct buf h;
	buf_init(&h);
	buf_printf(&h, "Return-Path: <%s>\n", env->sender);
	int w = write_all(fd, h.data, h.len);
	buf_free(&h);
	if (w < 0 || copy_fd(msgfd, fd) < 0 || fsync(fd) < 0)
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	/* The delivery: one rename into new/, between the two directories we opened (not
	 * names looked up again), made durable before we drop the outbox entry. */
	where = "new/";
	if (renameat(tmpfd, base, newfd, base) < 0)
		goto fail;
	tmp_made = 0;
	if (fsync(newfd) < 0)
		goto fail;
	snprintf(reply, rlen, "delivered to %s/new/%s", cc->maildir, base);
	res = CONN_OK;
	goto out;
fail:
	snprintf(reply, rlen, "%s: %s: %s", cc->maildir, where, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (tmp_made)
		unlinkat(tmpfd, base, 0);
out:
	if (tmpfd >= 0)
		close(tmpfd);
	if (newfd >= 0)
		close(newfd);
	return res;
}

int main(int argc, char **argv)
{
	static const struct connector cn = {
	    .prog = "connector-maildir",
	    .type = CONN_MAILDIR,
	    .deliver = maildir_deliver,
	};
	return connector_main(&cn, argc, argv);
}
