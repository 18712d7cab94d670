/*
 * spoolctl inject [-U] [-q ID] -f SENDER RCPT... < message
 *
 * Writes a queue file (docs/INTERNALS.md) into tmp/, fsyncs it and renames it into
 * inbound/ under a fresh queue ID, which it prints; the splitter keeps that ID. Works as
 * a Postfix pipe(8) transport: exit 0 accepted; 75 try again (spool missing, disk full);
 * 64 usage; 65 (EX_DATAERR) bad address; 78 config. pipe(8) turns 64 and 65 into a
 * permanent failure (a bounce), 75 into a deferral.
 *
 * Every address is checked by envelope_addr_check before anything is written: one that
 * could close the SMTP path or add an ESMTP parameter ("a@b> NOTIFY=NEVER") is refused
 * with exit 65, and so is a non-ASCII one unless -U says the envelope is SMTPUTF8.
 *
 * spoolctl inject -q ID ...: idempotent for one delivery attempt of the caller's queue
 * (Postfix: -q ${queue_id}). When pipe(8) retries a delivery whose inject was killed after
 * it had queued the message, the retry must not queue it again. The key is a hash of ID,
 * the sender and the recipients; its record is a directory tmp/idem.<key>/ that lives for
 * a day (spool_tmp_sweep), in which the queue file is written (q.tmp), completed by a
 * rename (q) and committed by the rename into inbound/. A retry that finds the record:
 *   - with q: the last try died between completing and committing: commit it now;
 *   - with only q.tmp: it died while writing: write it again from standard input;
 *   - with neither: it was committed: accept again without queuing (exit 0).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "crash.h"
#include "ctl.h"
#include "envelope.h"
#include "log.h"
#include <nettle/sha2.h>
#include <sys/file.h>
#include "spool.h"
#include "util.h"

/* A bad address is the sender's fault and permanent: exit 65, naming the address (escaped:
 * it is attacker data) and what is wrong with it. */
static _Noreturn void inject_bad_address(const char *what, const char *addr, const char *why)
{
	struct buf b;
	buf_init(&b);
	escape_bytes(&b, addr, strlen(addr), 200);
	die_perm(EXIT_DATAERR, "invalid %s address \"%s\": %s", what, buf_cstr(&b), why);
}

/* Read standard input to its end, bounded only by time: the caller is writing it. */
static void inject_drain(void)
{
	char tmp[65536];
	for (;;) {
		ssize_t r = read(0, tmp, sizeof tmp);
		if (r > 0 || (r < 0 && errno == EINTR))
			continue;
		return;
	}
}

enum inject_idem { INJECT_IDEM_FRESH, INJECT_IDEM_COMPLETE, INJECT_IDEM_COMMITTED };

/* Open (making it if need be) and lock the record tmp/idem.<key> of one delivery attempt
 * of the caller's message: the key hashes the caller's queue ID, the sender and the
 * recipients, so each recipient batch of one Postfix queue file has its own. Says what an
 * earlier try left: nothing or a partial q.tmp (FRESH: write it), a complete q with its
 * queue ID (COMPLETE: commit it), or only the queue ID (COMMITTED: queued already). */
static enum inject_idem inject_idem_open(struct spool *sp, const char *caller_id,
                                         const struct envelope *env, char idname[48], int *idfd,
                                         char qid[SPOOL_QID_LEN + 1])
{
	size_t n = strlen(caller_id);
	struct sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_init(&h);
	sha256_update(&h, n + 1, (const uint8_t *)caller_id);
	sha256_update(&h, strlen(env->sender) + 1, (const uint8_t *)env->sender);
	for (size_t i = 0; i < env->n_rcpts; i++)
		sha256_update(&h, strlen(env->rcpts[i]) + 1, (const uint8_t *)env->rcpts[i]);
	sha256_digest(&h, sizeof d, d);
	int k = snprintf(idname, 48, "idem.");
	for (size_t i = 0; i < 16; i++)
		k += snprintf(idname + k, 48 - (size_t)k, "%02x", d[i]);
	if (mkdirat(sp->fd[SD_TMP], idname, 0750) < 0 && errno != EEXIST)
		die_temp(NULL, "cannot create %s/tmp/%s: %s", sp->root, idname, strerror(errno));
	*idfd = openat(sp->fd[SD_TMP], idname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	/* Two tries of one delivery never run at once in Postfix; the lock makes sure. */
	if (*idfd < 0 || flock(*idfd, LOCK_EX) < 0)
		die_temp(NULL, "cannot open %s/tmp/%s: %s", sp->root, idname, strerror(errno));
	struct buf v;
	buf_init(&v);
	int have_qid = read_file_at(*idfd, "qid", &v, 64) == 0 && spool_qid_valid(buf_cstr(&v));
	if (have_qid)
		snprintf(qid, SPOOL_QID_LEN + 1, "%s", buf_cstr(&v));
	buf_free(&v);
	struct stat st;
	if (have_qid && fstatat(*idfd, "q", &st, AT_SYMLINK_NOFOLLOW) == 0)
		return INJECT_IDEM_COMPLETE;
	if (have_qid && fstatat(*idfd, "q.tmp", &st, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
		return INJECT_IDEM_COMMITTED;
	/* Partial, or new: whatever is there is rewritten under a fresh queue ID. */
	unlinkat(*idfd, "q", 0);
	unlinkat(*idfd, "qid", 0);
	return INJECT_IDEM_FRESH;
}

/* The arguments: -f SENDER, -U, -q ID and the recipients, each address checked, into env
 * (initialized by the caller). Returns the caller's queue ID, or NULL without -q. Exits 64
 * on a usage error, 65 on a bad address. */
static const char *inject_args_parse(int argc, char **argv, struct envelope *env)
{
	const char *sender = NULL, *why, *caller_id = NULL;
	int i = 0;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
			sender = argv[++i];
		else if (strcmp(argv[i], "-U") == 0)
			env->smtputf8 = 1;
		else if (strcmp(argv[i], "-q") == 0 && i + 1 < argc)
			caller_id = argv[++i];
		else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else if (argv[i][0] == '-')
			ctl_usage();
		else
			break;
	}
	if (sender == NULL || i >= argc)
		ctl_usage();
	/* The caller's queue ID names nothing on disk (its hash does), but keep it sane:
	 * Postfix's are letters and digits. */
	if (caller_id != NULL) {
		size_t n = strlen(caller_id);
		if (n == 0 || n > 64 ||
		    strspn(caller_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		                      "0123456789") != n)
			die_perm(EXIT_USAGE,
			         "inject -q: the queue ID must be 1 to 64 letters and digits");
	}
	/* Postfix passes "<>" or "" for the null sender. */
	if (strcmp(sender, "<>") == 0)
		sender = "";
	if (envelope_addr_check(sender, env->smtputf8, &why) < 0)
		inject_bad_address("sender", sender, why);
	env->sender = xstrdup(sender);
	for (; i < argc; i++) {
		if (argv[i][0] == '\0')
			inject_bad_address("recipient", argv[i], "empty");
		if (envelope_addr_check(argv[i], env->smtputf8, &why) < 0)
			inject_bad_address("recipient", argv[i], why);
		if (envelope_add_rcpt(env, argv[i]) < 0)
			die_perm(EXIT_DATAERR, "more than %d recipients", ENV_RCPT_MAX);
	}
	return caller_id;
}

/* Copy standard input to its end into fd; -1 with errno (EFBIG past the bound). */
static int inject_body_copy(const struct conf *c, int fd)
{
	/* Bounded: a runaway writer must not fill the spool's disk. */
	return copy_stream_bounded(0, fd, c->splitter.max_message_size * 2 + (1u << 20));
}

int ctl_cmd_inject(struct conf *c, int argc, char **argv)
{
	struct envelope env;
	envelope_init(&env);
	const char *caller_id = inject_args_parse(argc, argv, &env);
	struct spool sp;
	ctl_spool_open(c, &sp);
	char qid[SPOOL_QID_LEN + 1], tmpname[SPOOL_QID_LEN + 16], idname[48];
	int wdir = sp.fd[SD_TMP], idfd = -1, fd = -1;
	struct buf b;
	buf_init(&b);
	spool_qid_new(qid);
	snprintf(tmpname, sizeof tmpname, "%s.inject", qid);
	if (caller_id != NULL) {
		switch (inject_idem_open(&sp, caller_id, &env, idname, &idfd, qid)) {
		case INJECT_IDEM_COMMITTED:
			/* Queued by the try that was killed before it could say so. The message is
			 * read to its end all the same: the caller (pipe(8)) writes it whole. */
			log_info(qid, "inject: %s was queued already by an earlier try; not again",
			         caller_id);
			inject_drain();
			goto done;
		case INJECT_IDEM_COMPLETE:
			inject_drain();
			wdir = idfd;
			snprintf(tmpname, sizeof tmpname, "q");
			goto commit;
		default:
			wdir = idfd;
			snprintf(tmpname, sizeof tmpname, "q.tmp");
		}
	}
	fd = openat(wdir, tmpname,
	            O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (idfd < 0 ? O_EXCL : 0), 0640);
	if (fd < 0)
		die_temp(NULL, "cannot create %s/tmp/%s: %s", sp.root, tmpname, strerror(errno));
	buf_addstr(&b, QUEUE_FILE_MAGIC);
	envelope_format(&env, &b);
	if (write_all(fd, b.data, b.len) < 0)
		goto ioerr;
	if (inject_body_copy(c, fd) < 0)
		goto ioerr;
	/* The data must be durable before the name appears in inbound/: once it is there,
	 * we have accepted the message and the caller may delete its copy. */
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		goto ioerr;
	}
	fd = -1;
	if (idfd >= 0) {
		/* Complete (q) and the queue ID it will have, both durable before the commit:
		 * a retry then commits this very file under this very ID. */
		if (renameat(idfd, "q.tmp", idfd, "q") < 0 ||
		    write_file_atomic(idfd, "qid", qid, strlen(qid), 0640) < 0 ||
		    fsync_dir(idfd) < 0)
			goto ioerr;
		snprintf(tmpname, sizeof tmpname, "q");
		CRASH_POINT("inject-complete");
	}
commit:
	/* Never over an existing name: a file a local user dropped into inbound/ under the
	 * queue ID we picked would be replaced, and lost. On EEXIST, another fresh ID. */
	for (int tries = 0;; tries++) {
		if (spool_rename_noreplace(wdir, tmpname, sp.fd[SD_INBOUND], qid) == 0)
			break;
		if (errno != EEXIST || tries >= 100)
			goto ioerr;
		spool_qid_new(qid);
		if (idfd >= 0 && write_file_atomic(idfd, "qid", qid, strlen(qid), 0640) < 0)
			goto ioerr;
	}
	/* And the name itself must be durable before we say "accepted". */
	if (fsync_dir(sp.fd[SD_INBOUND]) < 0)
		goto ioerr;
	CRASH_POINT("inject-committed");
done:
	printf("%s\n", qid);
	if (idfd >= 0)
		close(idfd);
	buf_free(&b);
	envelope_free(&env);
	spool_close(&sp);
	return 0;
ioerr:;
	int err = errno;
	if (fd >= 0)
		close(fd);
	/* A record's q.tmp stays for the retry to rewrite; a plain inject's file goes. */
	if (idfd < 0)
		unlinkat(sp.fd[SD_TMP], tmpname, 0);
	die_temp(NULL, "cannot queue the message in %s: %s", sp.root, strerror(err));
}
