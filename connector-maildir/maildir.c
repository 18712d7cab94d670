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

static int maildir_make(const char *root)
{
	static const char *subs[] = {"", "/tmp", "/new", "/cur"};
	for (size_t i = 0; i < ARRAY_LEN(subs); i++) {
		char *p = xasprintf("%s%s", root, subs[i]);
		int r = mkdir(p, 0700);
		int err = errno;
		free(p);
		if (r < 0 && err != EEXIST) {
			errno = err;
			return -1;
		}
	}
	return 0;
}

/* 1 if a file named base (new/) or base:... (cur/, after a reader saw it) exists. */
static int maildir_has(const char *root, const char *base)
{
	struct stat st;
	char *p = xasprintf("%s/new/%s", root, base);
	int found = stat(p, &st) == 0;
	free(p);
	if (found)
		return 1;
	char *cur = xasprintf("%s/cur", root);
	DIR *d = opendir(cur);
	free(cur);
	if (d == NULL)
		return 0;
	size_t bl = strlen(base);
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
	char *tmp = NULL, *fin = NULL;
	int fd = -1;
	if (maildir_make(cc->maildir) < 0) {
		snprintf(reply, rlen, "%s: %s", cc->maildir, strerror(errno));
		return CONN_TEMP;
	}
	if (maildir_has(cc->maildir, base)) {
		snprintf(reply, rlen, "already in %s (an earlier delivery was interrupted)",
		         cc->maildir);
		return CONN_OK;
	}
	tmp = xasprintf("%s/tmp/%s", cc->maildir, base);
	fin = xasprintf("%s/new/%s", cc->maildir, base);
	unlink(tmp); /* debris of an interrupted attempt */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto fail;
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
	/* The delivery: one rename into new/, made durable before we drop the outbox entry. */
	if (rename(tmp, fin) < 0)
		goto fail;
	char *newdir = xasprintf("%s/new", cc->maildir);
	int r = fsync_path(newdir);
	free(newdir);
	if (r < 0)
		goto fail;
	snprintf(reply, rlen, "delivered to %s", fin);
	res = CONN_OK;
	goto out;
fail:
	snprintf(reply, rlen, "%s: %s", tmp ? tmp : cc->maildir, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (tmp)
		unlink(tmp);
out:
	free(tmp);
	free(fin);
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
