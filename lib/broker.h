/*
 * broker - the scanner exec broker: scanners run as scanner_user, a user that can read
 * only the parts of the message being scanned and can write nothing in the spool
 * (issue 15).
 *
 * The scanner-runner is not root and cannot change uid, so spoold, while still root,
 * forks a broker that becomes scanner_user for good (spoold/broker.c) and keeps one end
 * of an AF_UNIX SOCK_SEQPACKET socketpair; every scanner-runner inherits the other end
 * (SPOOLD_SCAN_BROKER_FD). exec_run() with opts.broker_fd >= 0 calls broker_run(), which
 * asks the broker to run the scanner instead of forking it itself; the answer is the
 * same struct exec_result, so the exit-code mapping and the virus-name extraction do
 * not change.
 *
 * PROTOCOL (all lengths bounded; anything out of bounds is refused with an error reply)
 *   1. runner -> broker socket, one message: struct broker_req, then the words
 *      "cwd\0argv0\0argv1\0..." (req.strings_len bytes, req.argc argv words, cwd "" for
 *      the broker's private directory), and in SCM_RIGHTS exactly one descriptor: a
 *      fresh reply socket (one end of a per-request socketpair the runner made). The
 *      kernel adds the sender's credentials (SCM_CREDENTIALS, the broker sets
 *      SO_PASSCRED): a request whose uid is not the runner's is refused.
 *   2. runner -> reply socket, ceil(n_files / BROKER_FDS_PER_MSG) messages: struct
 *      broker_files (first, count, present[count]) and in SCM_RIGHTS the descriptors of
 *      the present files, in order. The runner opens each file itself, O_RDONLY. A file
 *      it could not open is "absent": its number stays closed in the scanner, which
 *      then reports the file missing (the canary's missing-file check, and an error,
 *      never clean, for a part).
 *   3. broker -> reply socket: struct broker_res, then res.output_len bytes of output
 *      in messages of at most BROKER_CHUNK. res.refused != 0 means the broker did not
 *      run it (malformed or refused request); the output then says why.
 *   The broker forks one handler per request. The handler runs exec_run() (process
 *   group, rlimits, deadline, PDEATHSIG, scrubbed env, output bound) with file i placed
 *   at descriptor BROKER_FD_BASE + i, so argv names it "/dev/fd/<BROKER_FD_BASE + i>"
 *   (broker_file_arg); rlimit_nofile is raised by those descriptors (they are open
 *   before the scanner starts, and its limit is for what it opens itself). cwd and TMPDIR are a
 * fresh, private, empty directory of the scanner user below the broker's own directory under /tmp
 * (clamscan needs a writable TMPDIR), removed after the run. If the reply socket closes (the runner
 *   died or gave up), the handler kills the scanner's process group at once.
 *
 * WHY THE PARTS ARE 0644 (a trust decision). A scanner opens "/dev/fd/N", and on Linux
 * that reopens the inode: the kernel checks the inode's mode against the scanner user,
 * who is "other" for the spool's files (0640, spool user and group). Passing the data
 * without a reopen (a pipe on stdin, or a memfd copy) works for one file only, or costs
 * a copy of every part. So broker_run() adds S_IROTH to each file it passes (fchmod on
 * the descriptor it opened: the runner owns the part). That exposes nothing by path: the
 * spool root is 0750 (0711 with control_group) and every state directory (scan/, tmp/,
 * quarantine/, outbox/...) is 0750 of the spool user and its own group, which the
 * scanner user is not in (dist/spoold.sysusers), so it cannot traverse to any file; it
 * reaches only the inodes it was handed. The modes are set by spoold at start
 * (spoold/privs.c) and tests/t_privsep_scanner.py checks what the scanner can reach.
 *
 * DIAGNOSTICS
 *   broker_run returns 0 when it has a result (a refused request is res->exec_failed
 *   with exec_errno EPERM/EPROTO/E2BIG and the reason in the output; a reply socket
 *   that broke mid-way - the handler was killed - is res->wait_failed with wait_errno:
 *   never a status, so never clean), and -1 with errno when the broker cannot be asked
 *   at all (socketpair failed, the broker socket is gone): the runner dies temporary
 *   and spoold restarts (it also exits 75 when the broker dies, see spoold/broker.c).
 *   broker_serve returns when every holder of the other end has closed it (spoold
 *   stopped); a malformed request is logged and refused, never a crash.
 */
#ifndef SPOOLD_BROKER_H
#define SPOOLD_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "exec.h"

#define BROKER_ENV          "SPOOLD_SCAN_BROKER_FD"
#define BROKER_MAGIC_REQ    0x53424b52u /* "SBKR" */
#define BROKER_MAGIC_FILES  0x53424b46u /* "SBKF" */
#define BROKER_MAGIC_RES    0x53424b41u /* "SBKA" */
#define BROKER_ARGC_MAX     2048
#define BROKER_STRINGS_MAX  (128 * 1024) /* cwd and argv words, NULs included */
#define BROKER_FILES_MAX    4096
#define BROKER_FDS_PER_MSG  200 /* under the kernel's SCM_MAX_FD (253) */
#define BROKER_FD_BASE      3
#define BROKER_OUTPUT_MAX   (16u << 20)
#define BROKER_CHUNK        (32 * 1024)
#define BROKER_HANDLERS_MAX 256 /* requests running at once; more are refused */
/* How long a handler waits for the runner's file batches. */
#define BROKER_FILES_WAIT_MS 30000

struct broker_req {
	uint32_t magic;
	uint32_t argc;
	uint32_t strings_len;
	uint32_t n_files;
	int32_t timeout_ms;
	int32_t grace_ms;
	uint64_t output_max;
	uint64_t rlimit_as;
	uint64_t rlimit_cpu;
	uint64_t rlimit_nofile;
};

struct broker_files {
	uint32_t magic;
	uint32_t first;
	uint32_t count;
	uint8_t present[BROKER_FDS_PER_MSG];
};

struct broker_res {
	uint32_t magic;
	int32_t refused; /* 0: ran; else an errno: the request was not run */
	int32_t exited, exit_code, signaled, signo, timed_out, exec_failed, exec_errno;
	int32_t wait_failed, wait_errno, output_truncated;
	int64_t ms;
	uint64_t output_len;
};

/* "/dev/fd/N" for file i of a request, into out. */
void broker_file_arg(size_t i, char *out, size_t len);

/* Runner side: run argv through the broker at broker_fd, passing o->files (paths the
 * runner opens itself). See DIAGNOSTICS. */
int broker_run(int broker_fd, char *const argv[], const struct exec_opts *o,
               struct exec_result *res);

/* The broker's socketpair: sv[0] for the runners, sv[1] for broker_serve, both
 * close-on-exec; SO_PASSCRED is set on sv[1] before any request can be sent (a request
 * queued before it would carry no credentials, and be refused). 0 or -1 with errno. */
int broker_socketpair(int sv[2]);

/* Broker side: serve requests on fd until every peer has closed it. Only requests sent
 * by runner_uid are run. workdir: the broker's private directory (the handlers make
 * their own below it). */
void broker_serve(int fd, uid_t runner_uid, const char *workdir);

/* spoold only (spoold/broker.c, see there): start the broker before the privilege drop;
 * the descriptor for the scanner-runners, or -1 when there is none. */
struct conf;
int broker_spawn(const struct conf *c, uid_t runner_uid, gid_t runner_gid);
/* 1 when pid (reaped with status) was the broker: spoold stops and exits 75. */
int broker_reaped(pid_t pid, int status);

#endif
