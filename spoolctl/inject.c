/*
 * spoolctl inject [-U] -f SENDER RCPT... < message
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
#include "ctl.h"
#include "envelope.h"
#include "log.h"
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

int ctl_cmd_inject(struct conf *c, int argc, char **argv)
{
	struct envelope env;
	const char *sender = NULL, *why;
	envelope_init(&env);
	int i = 0;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
			sender = argv[++i];
		else if (strcmp(argv[i], "-U") == 0)
			env.smtputf8 = 1;
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
	/* Postfix passes "<>" or "" for the null sender. */
	if (strcmp(sender, "<>") == 0)
		sender = "";
	if (envelope_addr_check(sender, env.smtputf8, &why) < 0)
		inject_bad_address("sender", sender, why);
	env.sender = xstrdup(sender);
	for (; i < argc; i++) {
		if (argv[i][0] == '\0')
			inject_bad_address("recipient", argv[i], "empty");
		if (envelope_addr_check(argv[i], env.smtputf8, &why) < 0)
			inject_bad_address("recipient", argv[i], why);
		if (envelope_add_rcpt(&env, argv[i]) < 0)
			die_perm(EXIT_DATAERR, "more than %d recipients", ENV_RCPT_MAX);
	}

	struct spool sp;
	ctl_spool_open(c, &sp);
	char qid[SPOOL_QID_LEN + 1], tmpname[SPOOL_QID_LEN + 16];
	spool_qid_new(qid);
	snprintf(tmpname, sizeof tmpname, "%s.inject", qid);
	int fd = openat(sp.fd[SD_TMP], tmpname, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		die_temp(NULL, "cannot create %s/tmp/%s: %s", sp.root, tmpname, strerror(errno));
	struct buf b;
	buf_init(&b);
	buf_addstr(&b, QUEUE_FILE_MAGIC);
	envelope_format(&env, &b);
	if (write_all(fd, b.data, b.len) < 0)
		goto ioerr;
	uint64_t total = 0;
	char tmp[65536];
	for (;;) {
		ssize_t r = read(0, tmp, sizeof tmp);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			goto ioerr;
		}
		if (r == 0)
			break;
		total += (uint64_t)r;
		/* Bounded: a runaway writer must not fill the spool's disk. */
		if (total > c->splitter.max_message_size * 2 + (1u << 20)) {
			errno = EFBIG;
			goto ioerr;
		}
		if (write_all(fd, tmp, (size_t)r) < 0)
			goto ioerr;
	}
	/* The data must be durable before the name appears in inbound/: once it is there,
	 * we have accepted the message and the caller may delete its copy. */
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		goto ioerr;
	}
	fd = -1;
	/* Never over an existing name: a file a local user dropped into inbound/ under the
	 * queue ID we picked would be replaced, and lost. On EEXIST, another fresh ID. */
	for (int tries = 0;; tries++) {
		if (spool_rename_noreplace(sp.fd[SD_TMP], tmpname, sp.fd[SD_INBOUND], qid) == 0)
			break;
		if (errno != EEXIST || tries >= 100)
			goto ioerr;
		spool_qid_new(qid);
	}
	/* And the name itself must be durable before we say "accepted". */
	if (fsync_dir(sp.fd[SD_INBOUND]) < 0)
		goto ioerr;
	printf("%s\n", qid);
	buf_free(&b);
	envelope_free(&env);
	spool_close(&sp);
	return 0;
ioerr:;
	int err = errno;
	if (fd >= 0)
		close(fd);
	unlinkat(sp.fd[SD_TMP], tmpname, 0);
	die_temp(NULL, "cannot queue the message in %s: %s", sp.root, strerror(err));
}
