// links:
/*
 * Unit tests for the scanner exec broker (lib/broker.h, issue 15): broker_serve runs in a
 * child (as our own uid: the drop to scanner_user is spoold's, tested end to end in
 * tests/t_privsep_scanner.py), and exec_run with broker_fd talks to it. A request runs
 * with its files at /dev/fd/3.., across several file batches, with a missing file left
 * closed, the deadline kept and output over one chunk passed whole; malformed requests
 * and a request from another uid get an error reply and the broker goes on; a runner
 * that hangs up has its scanner killed.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "exec.h"
#include "util.h"
#include "check.h"

static char test_dir[] = "/tmp/test_broker.XXXXXX";

/* A broker in a child, serving runner_uid; returns our end. */
static int test_broker_start(uid_t runner_uid, pid_t *pid)
{
	int sv[2];
	if (broker_socketpair(sv) < 0)
		return -1;
	*pid = fork();
	if (*pid == 0) {
		close(sv[0]);
		broker_serve(sv[1], runner_uid, test_dir);
		_exit(0);
	}
	close(sv[1]);
	return sv[0];
}

static int test_sh(int bfd, const char *script, const char *const *files, size_t n, int timeout_ms,
                   size_t output_max, struct exec_result *res)
{
	char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
	struct exec_opts o;
	exec_opts_init(&o);
	o.broker_fd = bfd;
	o.files = files;
	o.n_files = n;
	o.timeout_ms = timeout_ms;
	o.output_max = output_max;
	return exec_run(argv, &o, res);
}

/* Send raw bytes as a request with a fresh reply socket (or none), and read the
 * answer's header. 1 if an answer came, 0 if none within 3 s. */
static int test_raw(int bfd, const void *p, size_t n, int with_reply, struct broker_res *h)
{
	int sp[2] = {-1, -1};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return 0;
	if (with_reply) {
		memset(&u, 0, sizeof u);
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof u.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &sp[1], sizeof(int));
	}
	int got = 0;
	if (sendmsg(bfd, &mh, MSG_NOSIGNAL) == (ssize_t)n) {
		close(sp[1]);
		sp[1] = -1;
		struct timeval tv = {.tv_sec = 3};
		setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		got = recv(sp[0], h, sizeof *h, 0) == (ssize_t)sizeof *h &&
		      h->magic == BROKER_MAGIC_RES;
	}
	close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	return got;
}

static struct broker_req test_req(uint32_t argc, uint32_t len)
{
	struct broker_req rq;
	memset(&rq, 0, sizeof rq);
	rq.magic = BROKER_MAGIC_REQ;
	rq.argc = argc;
	rq.strings_len = len;
	rq.output_max = 1024;
	rq.timeout_ms = 5000;
	return rq;
}

int main(void)
{
	struct exec_result res;
	char path[256], script[1024];
	if (mkdtemp(test_dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	exec_sigchld_default();
	pid_t bpid;
	int bfd = test_broker_start(getuid(), &bpid);
	CHECK("broker_started", bfd >= 0);

	/* 300 files: two batches; file i holds "f<i>". The scanner reads the first, the
	 * last, and a missing one (absent: its number stays closed). */
	enum { NF = 300 };
	char *names[NF];
	for (int i = 0; i < NF; i++) {
		snprintf(path, sizeof path, "%s/f%03d", test_dir, i);
		names[i] = xstrdup(path);
		if (i == 7)
			continue; /* never made: absent */
		FILE *f = fopen(path, "w");
		fprintf(f, "f%d\n", i);
		fclose(f);
		chmod(path, 0600);
	}
	snprintf(script, sizeof script,
	         "cat /dev/fd/3 /dev/fd/%d /dev/fd/%d /dev/fd/%d; test -e /dev/fd/%d || "
	         "echo missing; pwd; echo T=$TMPDIR; exit 3",
	         BROKER_FD_BASE + NF - 1, BROKER_FD_BASE + 150, BROKER_FD_BASE + 250,
	         BROKER_FD_BASE + 7);
	int r = test_sh(bfd, script, (const char *const *)names, NF, 10000, 4096, &res);
	const char *out = buf_cstr(&res.output);
	CHECK("run_ok", r == 0 && res.exited && res.exit_code == 3 && !res.output_truncated);
	CHECK("run_files_placed", strncmp(out, "f0\nf299\nf150\nf250\nmissing\n", 26) == 0);
	CHECK("run_private_cwd_is_tmpdir",
	      strstr(out, test_dir) && strstr(out, "/run.") && strstr(out, "T=/tmp/test_broker"));
	struct stat st;
	CHECK("file_made_readable_by_descriptor",
	      stat(names[0], &st) == 0 && (st.st_mode & 0777) == 0604);
	printf("# output: %s\n", out);
	exec_result_free(&res);

	/* The deadline holds through the broker. */
	r = test_sh(bfd, "sleep 10", NULL, 0, 500, 1024, &res);
	CHECK("timeout", r == 0 && res.timed_out && !res.exited);
	exec_result_free(&res);

	/* Output over several chunks comes whole. */
	r = test_sh(bfd, "head -c 100000 /dev/zero | tr '\\0' a", NULL, 0, 10000, 200000, &res);
	CHECK("output_chunks", r == 0 && res.exited && res.exit_code == 0 &&
	                           res.output.len == 100000 && !res.output_truncated);
	exec_result_free(&res);

	/* Malformed requests: an error reply each, never a crash. */
	struct broker_res h;
	CHECK("garbage_refused", test_raw(bfd, "hello", 5, 1, &h) && h.refused == EPROTO);
	struct broker_req rq = test_req(BROKER_ARGC_MAX + 1, 0);
	CHECK("argc_refused", test_raw(bfd, &rq, sizeof rq, 1, &h) && h.refused == EPROTO);
	{
		char b[sizeof rq + 16];
		rq = test_req(2, 16);
		memcpy(b, &rq, sizeof rq);
		memset(b + sizeof rq, 'x', 16); /* no NUL at all */
		CHECK("unterminated_refused",
		      test_raw(bfd, b, sizeof b, 1, &h) && h.refused == EPROTO);
		rq = test_req(1, 16);
		memcpy(b, &rq, sizeof rq);
		memcpy(b + sizeof rq, "\0bin/true\0\0\0\0\0\0\0", 16); /* too many words */
		CHECK("extra_words_refused",
		      test_raw(bfd, b, sizeof b, 1, &h) && h.refused == EPROTO);
		rq = test_req(1, 9);
		memcpy(b, &rq, sizeof rq);
		memcpy(b + sizeof rq, "\0bin/sh\0", 8);
		rq.strings_len = 8;
		memcpy(b, &rq, sizeof rq);
		CHECK("relative_argv0_refused",
		      test_raw(bfd, b, sizeof rq + 8, 1, &h) && h.refused == EPROTO);
		rq = test_req(1, 9);
		rq.n_files = BROKER_FILES_MAX + 1;
		memcpy(b, &rq, sizeof rq);
		memcpy(b + sizeof rq, "\0/bin/sh", 9);
		CHECK("too_many_files_refused",
		      test_raw(bfd, b, sizeof rq + 9, 1, &h) && h.refused == EPROTO);
	}
	char big[sizeof rq + BROKER_STRINGS_MAX + 64];
	memset(big, 0, sizeof big);
	CHECK("oversize_refused", test_raw(bfd, big, sizeof big, 1, &h) && h.refused == E2BIG);
	CHECK("no_reply_socket_no_answer", !test_raw(bfd, "hello", 5, 0, &h));

	/* ...and it goes on. */
	r = test_sh(bfd, "echo alive", NULL, 0, 10000, 1024, &res);
	CHECK("broker_goes_on", r == 0 && res.exited && res.exit_code == 0 &&
	                            strcmp(buf_cstr(&res.output), "alive\n") == 0);
	CHECK("broker_alive", waitpid(bpid, NULL, WNOHANG) == 0);
	exec_result_free(&res);

	/* A runner that goes away: its scanner is killed, not left to run. */
	{
		snprintf(path, sizeof path, "%s/pid", test_dir);
		snprintf(script, sizeof script, "echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 60",
		         path, path, path);
		pid_t kid = fork();
		if (kid == 0) {
			test_sh(bfd, script, NULL, 0, 120000, 1024, &res);
			_exit(0);
		}
		long spid = 0;
		for (int i = 0; i < 100 && spid == 0; i++) {
			FILE *f = fopen(path, "r");
			if (f) {
				if (fscanf(f, "%ld", &spid) != 1)
					spid = 0;
				fclose(f);
			}
			usleep(50000);
		}
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		int gone = 0;
		for (int i = 0; i < 100 && !gone; i++) {
			gone = spid > 0 && kill((pid_t)spid, 0) < 0 && errno == ESRCH;
			usleep(50000);
		}
		CHECK("runner_gone_scanner_killed", spid > 0 && gone);
	}

	/* Another uid's request is refused. */
	pid_t bpid2;
	int bfd2 = test_broker_start(getuid() + 1, &bpid2);
	r = test_sh(bfd2, "echo ran", NULL, 0, 10000, 1024, &res);
	CHECK("other_uid_refused", r == 0 && res.exec_failed && res.exec_errno == EPERM &&
	                               strstr(buf_cstr(&res.output), "ran\n") == NULL);
	printf("# %s\n", buf_cstr(&res.output));
	exec_result_free(&res);

	/* Every peer closed: the broker returns. */
	close(bfd);
	close(bfd2);
	int st2;
	CHECK("broker_exits_on_close", waitpid(bpid, &st2, 0) == bpid && WIFEXITED(st2));
	waitpid(bpid2, NULL, 0);
	for (int i = 0; i < NF; i++) {
		unlink(names[i]);
		free(names[i]);
	}
	unlink(path);
	rmdir(test_dir);
	return failures ? 1 : 0;
}
