/*
 * splitter - intake and MIME extraction (docs/INTERNALS.md, states S0 -> S1 -> S2).
 *
 * Claims each name dropped in inbound/ into a fresh work directory incoming/<qid>/,
 * obtains the envelope, writes every part as NNNN.ATT with a manifest, and commits the
 * work directory to scan/ with one rename. Anything that is not a usable message goes to
 * badmail/ with a reason. A message that crashed the splitter poison_attempts times goes
 * to badmail/ too, instead of crash-looping.
 *
 * splitter -x FILE -o DIR extracts one file into DIR and prints its manifest (for
 * administrators, the conformance test and the benchmarks); nothing in the spool changes.
 *
 * DIAGNOSTICS
 *   Exit 75 when the spool is unusable; 78 on a config error; a bad message is never an
 *   exit, it is a badmail entry.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "entry_names.h"
#include "export.h"
#include "crash.h"
#include "envelope.h"
#include "landlock.h"
#include "log.h"
#include "metrics.h"
#include "manifest.h"
#include "queuefile.h"
#include "mime.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"

/* Files of a work directory that survive a re-split; everything else is redone.
 * "requeues" is the fleet's pass count (lib/export.c): a badmail entry requeued is split
 * again, and its new records must keep the pass the requeue gave them. */
static const char *const splitter_keep[] = {
    ENTRY_MESSAGE, ENTRY_ENVELOPE, ENTRY_ATTEMPTS, ENTRY_TRACE, ENTRY_ORIGIN, ENTRY_REQUEUES, NULL};

/* Intake is paused while the spool's filesystem is (nearly) full; logged once per change. */
static int splitter_space_low;

static void splitter_space_mark_low(struct spool *sp, const char *why)
{
	if (!splitter_space_low)
		log_error(NULL,
		          "spool %s is full (%s; %llu bytes free): not claiming new mail until "
		          "space comes back",
		          sp->root, why, (unsigned long long)spool_space_free(sp));
	splitter_space_low = 1;
}

/* An environment failure while splitting. A full disk defers the message - it stays in
 * incoming/ with no manifest, so it never looks complete, and is split again from scratch
 * once space is back - and pauses intake. Anything else is a temporary death. Returns 0
 * (deferred) or does not return. */
static int splitter_tempfail(struct spool_entry *e, const char *what)
{
	int err = errno;
	if (err == ENOSPC || err == EDQUOT) {
		splitter_space_mark_low(e->sp, strerror(err));
		log_warn(e->qid, "%s: %s; deferred", what, strerror(err));
		return 0;
	}
	die_temp(e->qid, "%s %s/incoming/%s: %s", what, e->sp->root, e->qid, strerror(err));
}

static void splitter_limits(const struct conf *c, struct mime_limits *lim)
{
	lim->max_message_size = c->splitter.max_message_size;
	lim->max_parts = c->splitter.max_parts;
	lim->max_depth = c->splitter.max_depth;
	lim->max_part_size = c->splitter.max_part_size;
	lim->max_total_size = c->splitter.max_total_size;
	lim->max_expansion = c->splitter.max_expansion;
	/* what the other stages need to move this message on */
	lim->min_free = SPOOL_RESERVE_BYTES;
	lim->scan_raw = c->splitter.scan_raw_message;
	lim->mem_max = MIME_MEM_MAX;
}

/* A file we may not lease that changed this recently may still be being written. */
#define SPLITTER_QUIET_S 3

/* Whether the file may still be being written: -1 if some process has it open for writing
 * (a slow cp into inbound/; its close, IN_CLOSE_WRITE, brings it back), the ms until its
 * quiet time ends (below), or 0 when it is complete.
 * A read lease can only be taken on a file nobody has open for writing. A separated
 * spool's splitter gets CAP_LEASE from its keeper for files other users drop. Without the
 * right to take leases (not the owner, no CAP_LEASE: a splitter run as the spool's user,
 * or by hand) we cannot tell, and wait instead until the file has not changed for
 * SPLITTER_QUIET_S seconds. No event marks the end of that wait, so the caller asks the
 * stage to look again then (stage_look_again), instead of leaving the file to the next
 * rescan. Queue-ID names are complete (below). */
static int64_t splitter_writer_busy(int fd, const char *name)
{
	if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
		fcntl(fd, F_SETLEASE, F_UNLCK);
		return 0;
	}
	if (errno == EAGAIN)
		return -1;
	/* A queue-ID name is how spoolctl inject (and lmtpd) name what they write whole
	 * under tmp/ and rename in: complete when it appears. (Anyone else who names a file so
	 * while still writing it only gets their own message split early, and scanned as it
	 * is then.) */
	if (spool_qid_valid(name))
		return 0;
	struct stat st;
	struct timespec now;
	if ((errno == EACCES || errno == EPERM) && fstat(fd, &st) == 0 &&
	    clock_gettime(CLOCK_REALTIME, &now) == 0 &&
	    now.tv_sec - st.st_mtim.tv_sec < SPLITTER_QUIET_S && now.tv_sec >= st.st_mtim.tv_sec)
		/* Quiet once the clock's second is SPLITTER_QUIET_S past the mtime's (the test
		 * above), plus a little, so that the look again finds it so. */
		return (int64_t)(st.st_mtim.tv_sec + SPLITTER_QUIET_S - now.tv_sec) * 1000 -
		       now.tv_nsec / 1000000 + 20;
	return 0;
}

/* Remove parts and manifests of an earlier, interrupted attempt. */
static int splitter_clean_workdir(struct spool_entry *e)
{
	char **names;
	size_t n;
	if (spool_list(e->fd, 0, &names, &n) < 0)
		return -1;
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		int keep = 0;
		for (const char *const *k = splitter_keep; *k; k++)
			if (strcmp(names[i], *k) == 0)
				keep = 1;
		if (!keep && remove_tree_at(e->fd, names[i]) < 0)
			rc = -1;
	}
	spool_names_free(names, n);
	return rc;
}

/* The config, for splitter_badmail's event record (set by splitter_work). */
static const struct conf *splitter_conf;

/* Commit the work directory to badmail/ with a reason. The message stays as it was. */
static int splitter_badmail(struct spool_entry *e, const char *reason)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s\n", reason);
	/* A stripped copy of a queue file is not the message as received: badmail keeps
	 * the original ("message") only. */
	if (unlinkat(e->fd, ENTRY_MESSAGE_BODY, 0) < 0 && errno != ENOENT)
		log_warn(e->qid, "cannot remove %s/incoming/%s/message.body: %s", e->sp->root,
		         e->qid, strerror(errno));
	log_warn(e->qid, "to badmail: %s", reason);
	trace_add(e->fd, e->qid, "badmail reason=%s", reason);
	if (splitter_conf)
		export_entry(splitter_conf, e, EXPORT_BADMAIL, reason);
	/* The reason, the trace and the event record must be on disk before the entry
	 * becomes final. */
	int w = spool_entry_write(e, ENTRY_REASON, b.data, b.len) < 0 || spool_entry_sync(e) < 0;
	buf_free(&b);
	if (w)
		return splitter_tempfail(e, "cannot write the reason of");
	CRASH_POINT("split-badmail");
	if (spool_entry_move(e, SD_BADMAIL) < 0)
		return splitter_tempfail(e, "cannot move to badmail/");
	metrics_inc("spoold_messages_total", "outcome=\"badmail\"", 1);
	return 1;
}

/* Read the poison counter and add one before parsing: if the parse crashes the
 * process, the next attempt knows. The first attempt, right after the claim, writes
 * nothing: a work directory without "attempts" was attempted once (a file per message
 * costs an inode on every message's path; only a retry needs one). Returns the new count,
 * or -1 when the message was deferred (disk full). */
static int splitter_attempt_count(struct spool_entry *e, int fresh)
{
	struct buf b;
	uint64_t n = 1;
	if (fresh)
		return 1;
	buf_init(&b);
	if (read_file_at(e->fd, ENTRY_ATTEMPTS, &b, 64) == 0) {
		char *nl = strchr(buf_cstr(&b), '\n');
		if (nl)
			*nl = '\0';
		if (parse_u64(b.data, &n) < 0)
			n = 1;
	}
	buf_reset(&b);
	buf_printf(&b, "%llu\n", (unsigned long long)n + 1);
	/* No sync: the counter must survive a crash of this process (the page cache does),
	 * not a power cut, after which one more attempt is harmless. */
	int w = spool_entry_write(e, ENTRY_ATTEMPTS, b.data, b.len) < 0;
	buf_free(&b);
	if (w)
		return splitter_tempfail(e, "cannot write the attempt count of") - 1;
	return (int)n + 1;
}

/* A queue file: split off the envelope records and write them as "envelope", and the
 * bare RFC 5322 part as "message.body". Nothing is synced here and "message" stays the
 * queue file: the commit's one sync makes both durable, and only then does
 * splitter_body_commit rename "message.body" over "message". So until that rename a
 * re-run finds the queue file (it starts with the magic) and strips it again, and after
 * it a re-run finds a bare message and a durable envelope. A message part that itself
 * starts with the magic would make the two cases look alike, so it is refused. Returns
 * the fd of the body, or -1 with reason (bad input), or -2 on I/O error. */
static int splitter_queue_file(struct spool_entry *e, int fd, char *reason, size_t rlen)
{
	struct buf head, env_out, attrs;
	struct envelope env;
	size_t used = 0;
	int rc = -1, out = -1;
	buf_init(&head);
	buf_init(&env_out);
	buf_init(&attrs);
	envelope_init(&env);
	/* Bound what we read: the X record, and the envelope is at most ENV_RCPT_MAX lines of
	 * ENV_ADDR_MAX. */
	size_t max = strlen(QUEUE_FILE_MAGIC) + QUEUEFILE_ATTR_MAX + 2 +
	             (size_t)(ENV_ADDR_MAX + 2) * (ENV_RCPT_MAX + 2);
	char tmp[65536];
	off_t off = 0;
	while (head.len < max) {
		ssize_t r = pread(fd, tmp, sizeof tmp, off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			snprintf(reason, rlen, "read: %s", strerror(errno));
			rc = -2;
			goto out;
		}
		if (r == 0)
			break;
		buf_add(&head, tmp, (size_t)r);
		off += r;
		if (memmem(head.data, head.len, "\nE\n", 3))
			break;
	}
	size_t ml = strlen(QUEUE_FILE_MAGIC);
	if (queuefile_head_parse(head.data + ml, head.len - ml, &env, &attrs, &used, reason, rlen) <
	    0)
		goto out;
	/* The intake's XFORWARD attributes (checked to be escaped name=value tokens): for the
	 * trace only, a claim by whoever wrote the file. */
	if (attrs.len)
		trace_add(e->fd, e->qid, "xforward %s", buf_cstr(&attrs));
	off_t from = (off_t)(ml + used);
	char magic[sizeof QUEUE_FILE_MAGIC];
	ssize_t mr = pread(fd, magic, ml, from);
	if (mr == (ssize_t)ml && memcmp(magic, QUEUE_FILE_MAGIC, ml) == 0) {
		snprintf(reason, rlen, "queue file whose message starts with the queue file magic");
		goto out;
	}
	envelope_format(&env, &env_out);
	if (spool_entry_write(e, ENTRY_ENVELOPE, env_out.data, env_out.len) < 0)
		goto ioerr;
	out = openat(e->fd, ENTRY_MESSAGE_BODY, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
	             0640);
	if (out < 0)
		goto ioerr;
	for (;;) {
		ssize_t r = pread(fd, tmp, sizeof tmp, from);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			goto ioerr;
		}
		if (r == 0)
			break;
		if (write_all(out, tmp, (size_t)r) < 0)
			goto ioerr;
		from += r;
	}
	rc = out;
	out = -1;
	goto out;
ioerr:
	snprintf(reason, rlen, "%s/incoming/%s: %s", e->sp->root, e->qid, strerror(errno));
	rc = -2;
out:
	if (out >= 0)
		close(out);
	envelope_free(&env);
	buf_free(&head);
	buf_free(&env_out);
	buf_free(&attrs);
	return rc;
}

/* After the commit sync: the durable body replaces the queue file, and the work
 * directory is fsync'd so that the rename is durable before the entry moves on (the
 * commit fsyncs the parent directories, not this one). 0, or -1 with errno. */
static int splitter_body_commit(struct spool_entry *e)
{
	if (renameat(e->fd, ENTRY_MESSAGE_BODY, e->fd, ENTRY_MESSAGE) < 0) {
		if (errno == ENOENT)
			return 0; /* not a queue file: nothing to replace */
		return -1;
	}
	return fsync_dir(e->fd);
}

/* Get the envelope into the work directory. Returns the (possibly new) message fd;
 * -1: bad input (reason); -2: I/O error. For a queue file the fd is the stripped body,
 * and *msg_name becomes "message.body", its name until splitter_body_commit. */
static int splitter_envelope(struct spool_entry *e, int fd, const char **msg_name, char *reason,
                             size_t rlen)
{
	struct envelope env;
	char magic[sizeof QUEUE_FILE_MAGIC];
	char why[256];
	envelope_init(&env);
	/* Still the queue file (a first attempt, or a re-run before splitter_body_commit):
	 * strip it (again); whatever envelope is there was not committed. */
	ssize_t r = pread(fd, magic, strlen(QUEUE_FILE_MAGIC), 0);
	if (r == (ssize_t)strlen(QUEUE_FILE_MAGIC) &&
	    memcmp(magic, QUEUE_FILE_MAGIC, strlen(QUEUE_FILE_MAGIC)) == 0) {
		int nfd = splitter_queue_file(e, fd, reason, rlen);
		if (nfd >= 0) {
			close(fd);
			*msg_name = ENTRY_MESSAGE_BODY;
		}
		return nfd;
	}
	if (envelope_read_at(e->fd, &env, why, sizeof why) == 0) {
		envelope_free(&env);
		return fd; /* from an earlier attempt: authoritative */
	}
	if (mime_envelope_from_headers(fd, &env, reason, rlen) < 0)
		return -1;
	struct buf b;
	buf_init(&b);
	envelope_format(&env, &b);
	int rc = fd;
	if (spool_entry_write(e, ENTRY_ENVELOPE, b.data, b.len) < 0) {
		snprintf(reason, rlen, "%s/incoming/%s/envelope: %s", e->sp->root, e->qid,
		         strerror(errno));
		rc = -2;
	}
	buf_free(&b);
	envelope_free(&env);
	return rc;
}

/* Make the claimed message ours: a file dropped by another user stays that user's after
 * the rename, and with fs.protected_hardlinks the router could not link it into an outbox
 * entry. Such a file is copied into one we own (written, fsync'd, renamed over the name);
 * our own file just gets mode 0640. Returns the message fd (perhaps new), or -1. */
static int splitter_message_own(struct spool_entry *e, int fd, const struct stat *sb)
{
	if (sb->st_uid == geteuid()) {
		if ((sb->st_mode & 07777) != 0640 && fchmod(fd, 0640) < 0)
			return -1;
		return fd;
	}
	int out = openat(e->fd, ENTRY_MESSAGE_OWN,
	                 O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (out < 0)
		return -1;
	/* The copy must be durable before it replaces the dropped file. */
	if (copy_fd(fd, out) < 0 || fsync(out) < 0) {
		close_keep_errno(out);
		return -1;
	}
	if (close(out) < 0 || renameat(e->fd, ENTRY_MESSAGE_OWN, e->fd, ENTRY_MESSAGE) < 0)
		return -1;
	int nfd = openat(e->fd, ENTRY_MESSAGE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (nfd < 0)
		return -1;
	close(fd);
	return nfd;
}

/* splitter_admit and splitter_parts: go on to the next step (any other value is the
 * result of splitter_work). */
#define SPLITTER_GO (-1)

/* The first step of splitter_work: open the message, judge it by its size and its
 * attempt count, take it over (message.own) and clean the work directory. *fdp is the
 * open message, or -1; the caller closes it. */
static int splitter_admit(struct stage *st, struct spool_entry *e, int fresh, int *fdp)
{
	const struct conf *c = st->conf;
	char reason[512];
	struct stat sb;
	int fd = spool_message_open(e, reason, sizeof reason);
	*fdp = fd;
	if (fd < 0)
		return splitter_badmail(e, reason);
	/* The inbound name, for splitter_writer_busy: a queue-ID name was kept as the qid,
	 * and a strip derivative (origin spoold-strip/<qid>, which only the router writes) was
	 * built whole by the router: both complete as they appear. */
	struct buf origin;
	buf_init(&origin);
	const char *was = "";
	if (read_file_at(e->fd, ENTRY_ORIGIN, &origin, 4096) == 0 &&
	    ((origin.len == SPOOL_QID_LEN + 1 && memcmp(origin.data, e->qid, SPOOL_QID_LEN) == 0) ||
	     (origin.len > 13 && memcmp(origin.data, "spoold-strip/", 13) == 0)))
		was = e->qid;
	int busy = splitter_writer_busy(fd, was);
	buf_free(&origin);
	if (busy) {
		/* Still being written into: parse it only once its writer is done. */
		log_info(e->qid, "message still open for writing; deferred");
		/* Not an attempt: the retry that splits it must count from zero. */
		if (fresh && spool_entry_write(e, ENTRY_ATTEMPTS, "0\n", 2) < 0)
			log_warn(e->qid, "cannot write the attempt count: %s", strerror(errno));
		return 0;
	}
	if (fstat(fd, &sb) < 0)
		return splitter_tempfail(e, "cannot stat the message of");
	if (sb.st_size == 0)
		return splitter_badmail(e, "empty file");
	if ((uint64_t)sb.st_size > c->splitter.max_message_size) {
		/* Judged by its size, before anything reads or copies it: a file this large
		 * (a 1 TB sparse file costs its dropper nothing) would cost us its size in
		 * space and time. The claim was a rename; badmail keeps it as it is. */
		snprintf(reason, sizeof reason,
		         "over limit (max_message_size): %llu bytes, the limit is %llu; not "
		         "parsed and not copied",
		         (unsigned long long)sb.st_size,
		         (unsigned long long)c->splitter.max_message_size);
		return splitter_badmail(e, reason);
	}
	int ofd = splitter_message_own(e, fd, &sb);
	if (ofd < 0)
		return splitter_tempfail(e, "cannot take ownership of the message of");
	*fdp = ofd;
	int attempts = splitter_attempt_count(e, fresh);
	if (attempts < 0)
		return 0;
	if (attempts > c->splitter.poison_attempts) {
		snprintf(reason, sizeof reason,
		         "poison message: the splitter died %d times while splitting it",
		         attempts - 1);
		return splitter_badmail(e, reason);
	}
	CRASH_POINT("split-claimed");
	if (splitter_clean_workdir(e) < 0)
		return splitter_tempfail(e, "cannot clean");
	return SPLITTER_GO;
}

/* The second step: the envelope (from a queue file or the headers), then the parts and
 * their manifest entries into m. *fdp is replaced when the envelope step gives a new
 * message file; *size is the size of the message that was split. */
static int splitter_parts(struct stage *st, struct spool_entry *e, int *fdp, struct manifest *m,
                          off_t *size)
{
	char reason[512];
	struct mime_limits lim;
	struct stat sb;
	const char *msg_name = ENTRY_MESSAGE;
	int nfd = splitter_envelope(e, *fdp, &msg_name, reason, sizeof reason);
	if (nfd == -1)
		return splitter_badmail(e, reason);
	if (nfd == -2)
		return splitter_tempfail(e, "cannot write the envelope of");
	*fdp = nfd;
	if (fstat(nfd, &sb) < 0)
		return splitter_tempfail(e, "cannot stat the message of");
	*size = sb.st_size;

	splitter_limits(st->conf, &lim);
	if ((uint64_t)sb.st_size > lim.max_message_size) {
		/* Not parsed at all, and never passed as if scanned: the mark makes the router
		 * treat it like a scanner error. */
		manifest_add_unscannable(m, "over limit (max_message_size)");
		return SPLITTER_GO;
	}
	int r = mime_extract(nfd, msg_name, e->fd, &lim, m, reason, sizeof reason);
	if (r == 1)
		return splitter_badmail(e, reason);
	if (r < 0)
		/* Partial parts may be left: without a manifest they never look complete, and
		 * the next attempt removes them first. */
		return splitter_tempfail(e, "cannot write the parts of");
	return SPLITTER_GO;
}

/* The last step: the manifest, the group commit and the hand-off to scan/. */
static int splitter_commit(struct spool_entry *e, const struct manifest *m, off_t size)
{
	struct buf mb;
	int rc;
	buf_init(&mb);
	CRASH_POINT("split-parts");
	manifest_format(m, &mb);
	if (spool_entry_write(e, ENTRY_MANIFEST, mb.data, mb.len) < 0) {
		rc = splitter_tempfail(e, "cannot write the manifest of");
		goto out;
	}
	trace_add(e->fd, e->qid, "split parts=%zu unscannable=%zu size=%lld", m->n_parts,
	          m->n_unscannable, (long long)size);
	/* The group commit: one syncfs makes the message (a plain cp into inbound/ did not
	 * fsync it), every part, the envelope, the manifest and all their names durable
	 * before the directory moves. Until the move, nothing here is visible to the next
	 * stage, and a power cut only leaves an incoming/ entry that is split again. */
	if (spool_entry_sync(e) < 0) {
		rc = splitter_tempfail(e, "cannot sync");
		goto out;
	}
	CRASH_POINT("split-precommit");
	if (splitter_body_commit(e) < 0) {
		rc = splitter_tempfail(e, "cannot put the message body in place in");
		goto out;
	}
	CRASH_POINT("split-body");
	/* The commit: the scanner-runner's sync makes this rename durable before it acts on
	 * the entry (spool_entry_handoff); a power cut before that leaves it in incoming/. */
	if (spool_entry_handoff(e, SD_SCAN) < 0) {
		rc = splitter_tempfail(e, "cannot move to scan/");
		goto out;
	}
	log_info(e->qid, "split parts=%zu%s", m->n_parts, m->n_unscannable ? " unscannable" : "");
	rc = 1;
out:
	buf_free(&mb);
	return rc;
}

/* Split one claimed work directory (fresh, or left by a killed predecessor).
 * Returns 1 when it moved on, 0 when deferred. */
/* fresh: e was just claimed from inbound/ (else it is a retry of an incoming/ entry). */
static int splitter_work(struct stage *st, struct spool_entry *e, int fresh)
{
	struct manifest m;
	off_t size = 0;
	int fd = -1;
	manifest_init(&m);
	splitter_conf = st->conf;
	int rc = splitter_admit(st, e, fresh, &fd);
	if (rc == SPLITTER_GO)
		rc = splitter_parts(st, e, &fd, &m, &size);
	if (rc == SPLITTER_GO) {
		/* The fleet's intake record: splitter_commit's sync makes it durable with the
		 * manifest, before the hand-off. */
		export_entry(st->conf, e, EXPORT_INTAKE, NULL);
		rc = splitter_commit(e, &m, size);
	}
	if (fd >= 0)
		close(fd);
	manifest_free(&m);
	return rc;
}

static int splitter_handle(struct stage *st, const char *name)
{
	struct spool_entry e;
	struct stat sb;
	int fd;
	if (name[0] == '.')
		return 0;
	/* Look before claiming: a regular file some writer still has open is left alone
	 * until its IN_CLOSE_WRITE. Everything else is claimed and judged afterwards. */
	if (fstatat(st->spool.fd[SD_INBOUND], name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	/* A file over max_message_size is claimed whatever the free space: it goes to
	 * badmail by a rename without being read, and must not hold up the names after it. */
	if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size <= st->conf->splitter.max_message_size) {
		/* Claim only what can be split with room to spare for the later stages; a full
		 * disk must stop intake, not fail messages half-way. The space a file takes is
		 * its blocks, not its size: a sparse file's size says nothing about the disk
		 * (what splitting it writes is counted against the free space as it goes). */
		uint64_t real = (uint64_t)sb.st_blocks * 512;
		uint64_t need = real * 3 + SPOOL_RESERVE_BYTES;
		if (splitter_space_low || spool_space_free(&st->spool) < need) {
			splitter_space_mark_low(&st->spool, "too little free space to split");
			return 0;
		}
		fd = openat(st->spool.fd[SD_INBOUND], name,
		            O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (fd >= 0) {
			int64_t busy = splitter_writer_busy(fd, name);
			close(fd);
			if (busy > 0)
				stage_look_again(st, name, busy);
			if (busy)
				return 0;
		}
	}
	int r = spool_inbound_claim(&st->spool, name, &e);
	if (r == 0)
		return 0;
	if (r < 0 && errno == EACCES && S_ISDIR(sb.st_mode))
		/* A directory another user dropped (separated spool): we may not move it. */
		return spool_set_aside(&st->spool, SD_INBOUND, name, &sb);
	if (r < 0) {
		log_warn(NULL, "cannot claim %s/inbound/%s: %s", st->spool.root, name,
		         strerror(errno));
		return 0;
	}
	struct buf b;
	buf_init(&b);
	escape_bytes(&b, name, strlen(name), 1024);
	trace_add(e.fd, e.qid, "intake name=%s", buf_cstr(&b));
	log_info(e.qid, "claimed inbound/%s", buf_cstr(&b));
	buf_free(&b);
	int did = splitter_work(st, &e, 1);
	spool_entry_release(&e);
	return did;
}

/* The stage's init hook: GMime is set up once, before the watcher thread starts. */
static void splitter_init(struct stage *st)
{
	(void)st;
	mime_init();
}

/* Start-up recovery: every unlocked work directory in incoming/ was left by a dead
 * splitter. With a message it is split again from scratch; without, it is removed. */
static int splitter_recover_pass(struct stage *st)
{
	char **names;
	size_t n;
	int pending = 0;
	if (spool_list(st->spool.fd[SD_INCOMING], 1, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/incoming: %s", st->spool.root, strerror(errno));
	for (size_t i = 0; i < n && !stage_stopping(); i++) {
		struct spool_entry e;
		struct stat sb;
		if (spool_entry_claim(&st->spool, SD_INCOMING, names[i], &e) != 1)
			continue;
		if (splitter_space_low) {
			spool_entry_release(&e);
			pending++;
			continue;
		}
		if (fstatat(e.fd, ENTRY_MESSAGE, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
			log_info(e.qid, "removing empty work directory left by a dead splitter");
			if (spool_entry_trash(&e) < 0)
				log_warn(e.qid, "cannot remove %s/incoming/%s: %s", st->spool.root,
				         e.qid, strerror(errno));
		} else {
			log_info(e.qid, "recovering interrupted split");
			if (splitter_work(st, &e, 0) == 0)
				pending++;
		}
		spool_entry_release(&e);
	}
	spool_names_free(names, n);
	return pending;
}

static void splitter_recover(struct stage *st)
{
	/* Start-up is done: from here on the parser reaches only these (lib/landlock.h). */
	static const enum spool_dir mine[] = {SD_INBOUND, SD_INCOMING, SD_SCAN, SD_BADMAIL,
	                                      SD_TMP,     SD_TRASH,    SD_RUN};
	/* Listed only: a dropped name that is a queue ID keeps it unless it is in use in any
	 * state (spool_inbound_claim), and outbox/ holds one directory per connector. */
	static const enum spool_dir look[] = {SD_ROUTE, SD_QUARANTINE, SD_HOLD, SD_OUTBOX};
	landlock_restrict_spool(&st->spool, mine, ARRAY_LEN(mine), look, ARRAY_LEN(look));
	splitter_recover_pass(st);
}

/* Deferred messages (still being written) wait in incoming/: look again every second. */
static int splitter_tick(struct stage *st)
{
	static int64_t next_sweep;
	if (now_ms_monotonic() >= next_sweep) {
		spool_tmp_sweep(&st->spool, 86400);
		next_sweep = now_ms_monotonic() + 3600 * 1000;
	}
	if (splitter_space_low) {
		if (spool_space_free(&st->spool) < 2 * SPOOL_RESERVE_BYTES)
			return 1000;
		splitter_space_low = 0;
		log_info(NULL, "spool %s has space again (%llu bytes free): resuming intake",
		         st->spool.root, (unsigned long long)spool_space_free(&st->spool));
		splitter_recover_pass(st);
		stage_scan(st);
	}
	return splitter_recover_pass(st) || splitter_space_low ? 1000 : -1;
}

/* splitter -x: the limits of the config, or the defaults without one. */
static void splitter_x_limits(const struct conf *c, struct mime_limits *lim)
{
	struct conf d;
	if (c == NULL) {
		memset(&d, 0, sizeof d);
		conf_splitter_defaults(&d.splitter);
		c = &d;
	}
	splitter_limits(c, lim);
}

/* Split one file into outdir (made if need be); the manifest goes to stdout. The message
 * is hard-linked into outdir as "message" (the raw part links to it), or copied where a
 * link is not possible (another filesystem, protected_hardlinks). head is written just
 * before the manifest, in the same write. 0, 1 (cannot be parsed), or EXIT_TEMPFAIL. */
static int splitter_extract_one(const struct mime_limits *lim, const char *file, const char *outdir,
                                const char *head)
{
	char reason[512];
	struct manifest m;
	struct buf b;
	int fresh = mkdir(outdir, 0750) == 0;
	if (!fresh && errno != EEXIST)
		die_perm(EXIT_USAGE, "cannot create %s: %s", outdir, strerror(errno));
	int dfd = open(outdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		die_perm(EXIT_USAGE, "cannot open %s: %s", outdir, strerror(errno));
	if (!fresh && unlinkat(dfd, ENTRY_MESSAGE, 0) < 0 && errno != ENOENT)
		die_perm(EXIT_USAGE, "cannot remove %s/message: %s", outdir, strerror(errno));
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_perm(EXIT_USAGE, "cannot open %s: %s", file, strerror(errno));
	if (linkat(AT_FDCWD, file, dfd, ENTRY_MESSAGE, 0) < 0) {
		int out = openat(dfd, ENTRY_MESSAGE, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
		if (out < 0 || copy_fd(fd, out) < 0)
			die_perm(EXIT_USAGE, "cannot copy %s into %s: %s", file, outdir,
			         strerror(errno));
		close(fd);
		fd = out;
	}
	manifest_init(&m);
	int r = mime_extract(fd, ENTRY_MESSAGE, dfd, lim, &m, reason, sizeof reason);
	close(fd);
	close(dfd);
	buf_init(&b);
	buf_addstr(&b, head);
	if (r != 0) {
		manifest_free(&m);
		int w = write_all(1, b.data, b.len);
		buf_free(&b);
		fprintf(stderr, "splitter: %s: %s\n", file, reason);
		return w == 0 && r == 1 ? 1 : EXIT_TEMPFAIL;
	}
	manifest_format(&m, &b);
	r = write_all(1, b.data, b.len) < 0 ? EXIT_TEMPFAIL : 0;
	buf_free(&b);
	manifest_free(&m);
	return r;
}

/* splitter [-c CONFIG] -o OUTDIR -x FILE...: one file into OUTDIR, or several, each into
 * OUTDIR/<n> (n from 1, in order) with its manifest after a line "file <n>". One process
 * for many files is how the stage works, and what bench/ compares with ripmime. */
static int splitter_extract(int argc, char **argv)
{
	const char *o = NULL, *c = NULL;
	const char **files = xcalloc((size_t)argc, sizeof *files);
	size_t n = 0;
	int xmode = 0, rc = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-x") == 0)
			xmode = 1;
		else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			o = argv[++i];
		else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			c = argv[++i];
		else if (xmode && argv[i][0] != '-')
			files[n++] = argv[i];
		else
			die_perm(EXIT_USAGE, "usage: splitter [-c CONFIG] -o OUTDIR -x FILE...");
	}
	if (n == 0 || o == NULL)
		die_perm(EXIT_USAGE, "usage: splitter [-c CONFIG] -o OUTDIR -x FILE...");
	struct conf *cf = c ? conf_load(c) : NULL;
	struct mime_limits lim;
	splitter_x_limits(cf, &lim);
	if (n == 1) {
		rc = splitter_extract_one(&lim, files[0], o, "");
	} else {
		if (mkdir(o, 0750) < 0 && errno != EEXIST)
			die_perm(EXIT_USAGE, "cannot create %s: %s", o, strerror(errno));
		for (size_t i = 0; i < n; i++) {
			char d[PATH_MAX], head[32];
			if (bsnprintf(d, sizeof d, "%s/%zu", o, i + 1) < 0)
				die_perm(EXIT_USAGE, "%s: path too long", o);
			snprintf(head, sizeof head, "file %zu\n", i + 1);
			int r = splitter_extract_one(&lim, files[i], d, head);
			if (r > rc)
				rc = r;
		}
	}
	free(files);
	conf_free(cf);
	return rc;
}

int main(int argc, char **argv)
{
	struct stage st = {
	    .name = "splitter",
	    .watch_dir = SD_INBOUND,
	    .init = splitter_init,
	    .recover = splitter_recover,
	    .handle = splitter_handle,
	    .tick = splitter_tick,
	    .tick_ms = 1000,
	};
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "-x") == 0 || strcmp(argv[i], "-o") == 0) {
			log_init("splitter");
			mime_init();
			return splitter_extract(argc, argv);
		}
	return stage_main(&st, argc, argv);
}
