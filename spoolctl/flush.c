/*
 * spoolctl flush hold | outbox/NAME - retry now what waits on a back-off.
 *
 *   hold          every entry of hold/ goes back to scan/ for a fresh scan, as requeue does
 *                 one; an entry held by hand (spoolctl hold: manual-hold) stays
 *   outbox/NAME   every entry of the connector's outbox is due now (its back-off is reset,
 *                 its attempts and first-attempt time kept), and the connector is woken
 *
 * Like Postfix's postqueue -f: after an outage is over, nobody should wait for a
 * back-off timer. An entry a stage or the connector is working on is skipped (counted as
 * busy). Exit 0; 64 usage; 75 the spool is unusable.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "entry_names.h"
#include "log.h"
#include "outbox.h"
#include "spool.h"
#include "util.h"

static int flush_hold(const struct conf *c, struct spool *sp)
{
	char **names;
	size_t n, done = 0, busy = 0, manual = 0;
	if (spool_list(sp->fd[SD_HOLD], 1, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/hold: %s", sp->root, strerror(errno));
	for (size_t i = 0; i < n; i++) {
		struct spool_entry e;
		int r = spool_entry_claim(sp, SD_HOLD, names[i], &e);
		if (r < 0)
			die_temp(names[i], "cannot claim %s/hold/%s: %s", sp->root, names[i],
			         strerror(errno));
		if (r == 0) {
			busy += errno != ENOENT;
			continue;
		}
		struct stat st;
		/* A hold made by hand is the operator's own decision: only requeue lifts it. */
		if (fstatat(e.fd, ENTRY_MANUAL_HOLD, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			manual++;
		} else {
			ctl_requeue_hold(c, &e, "flush");
			done++;
		}
		spool_entry_release(&e);
	}
	spool_names_free(names, n);
	printf("flushed %zu held message(s) to scan/; %zu busy, %zu held by hand (spoolctl "
	       "requeue lifts those)\n",
	       done, busy, manual);
	return 0;
}

static int flush_outbox(struct conf *c, struct spool *sp, const char *conn)
{
	if (conf_connector_find(c, conn) == NULL)
		die_perm(EXIT_USAGE, "no connector named \"%.64s\" in %s", conn, c->path);
	int dirfd = spool_outbox_open(sp, conn);
	if (dirfd < 0)
		die_temp(NULL, "cannot open %s/outbox/%s: %s", sp->root, conn, strerror(errno));
	char **names;
	size_t n, done = 0, busy = 0;
	if (spool_list(dirfd, 1, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/outbox/%s: %s", sp->root, conn, strerror(errno));
	for (size_t i = 0; i < n; i++) {
		struct outbox_entry e;
		int r = outbox_entry_claim(sp, dirfd, conn, names[i], &e);
		if (r < 0)
			die_temp(names[i], "cannot claim %s/outbox/%s/%s: %s", sp->root, conn,
			         names[i], strerror(errno));
		if (r == 0) {
			busy++;
			continue;
		}
		if (outbox_retry_now(&e) < 0)
			die_temp(names[i], "cannot reset the retry state of %s/outbox/%s/%s: %s",
			         sp->root, conn, names[i], strerror(errno));
		outbox_entry_release(&e);
		done++;
	}
	spool_names_free(names, n);
	/* Wake the connector: it watches its outbox for new names and rescans on this one.
	 * A connector that is not running finds the entries due when it starts. */
	int fd = openat(dirfd, OUTBOX_FLUSH_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd >= 0) {
		close(fd);
		unlinkat(dirfd, OUTBOX_FLUSH_NAME, 0);
	}
	close(dirfd);
	log_audit(NULL, "flushed outbox/%s: %zu entries due now", conn, done);
	printf("flushed %zu message(s) in outbox/%s: due now; %zu busy\n", done, conn, busy);
	return 0;
}

int ctl_cmd_flush(struct conf *c, int argc, char **argv)
{
	if (argc != 1)
		ctl_usage();
	struct spool sp;
	ctl_spool_open(c, &sp);
	int rc;
	if (strcmp(argv[0], "hold") == 0)
		rc = flush_hold(c, &sp);
	else if (strncmp(argv[0], "outbox/", 7) == 0 && argv[0][7] != '\0')
		rc = flush_outbox(c, &sp, argv[0] + 7);
	else
		ctl_usage();
	spool_close(&sp);
	return rc;
}
