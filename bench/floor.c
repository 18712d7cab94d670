/*
 * floor - the cost floor of each thing the pipeline does, measured alone (bench/run.py).
 *
 *   floor exec NOOP LIST       fork+execve NOOP FILE and waitpid, for each FILE in LIST
 *   floor fildes SOCK LIST     per FILE: open, connect to clamd's unix socket, "zFILDES\0",
 *                              one byte carrying the descriptor (SCM_RIGHTS), read the
 *                              reply to its NUL, close
 *   floor fsync DIR N          N minimal hand-offs: write a small file, fsync it, fsync its
 *                              directory, rename that directory into DIR/b, fsync both
 *                              parent directories (what one spool commit rename needs)
 *   floor gmime LIST OUT       mime_extract (splitter/mime.c, the splitter's own code) of
 *                              each message, in this one process, into OUT/<n>/
 *
 * LIST is a file with one path per line. Prints "<count> <seconds>" on stdout.
 * WHY one process: these are the costs no implementation can avoid, measured alone as
 * references (bench/run.py section 7 quotes the scanner-runner against exec and FILDES).
 * The pipeline's floor is no longer their serial sum but the CPU bound that run.py measures
 * from /proc (issue 19): the pipeline beat the old sum, fsync's included, so it was no
 * floor. The fsync mode is kept for measuring a hand-off alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "manifest.h"
#include "mime.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what, const char *path)
{
	fprintf(stderr, "floor: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

static char **read_list(const char *path, size_t *n)
{
	FILE *f = fopen(path, "re");
	if (!f)
		fail("cannot open", path);
	size_t cap = 1024, len = 0;
	char **v = malloc(cap * sizeof *v);
	char line[4096];
	while (v && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		if (len == cap) {
			cap *= 2;
			char **nv = realloc(v, cap * sizeof *v);
			if (!nv)
				break;
			v = nv;
		}
		v[len++] = strdup(line);
	}
	fclose(f);
	if (!v)
		fail("out of memory reading", path);
	*n = len;
	return v;
}

static void bench_fsync_path(const char *p)
{
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		fail("cannot fsync", p);
	close(fd);
}

static int run_exec(const char *noop, char **files, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			fail("cannot fork for", files[i]);
		if (pid == 0) {
			int dn = open("/dev/null", O_RDWR);
			if (dn >= 0) {
				dup2(dn, 0);
				dup2(dn, 1);
			}
			char *argv[] = {(char *)noop, files[i], NULL};
			char *envp[] = {NULL};
			execve(noop, argv, envp);
			_exit(127);
		}
		int st;
		if (waitpid(pid, &st, 0) < 0)
			fail("cannot wait for", noop);
		if (!WIFEXITED(st) || WEXITSTATUS(st) > 1)
			fail("no-op scanner failed on", files[i]);
	}
	return 0;
}

static int run_fildes(const char *sock, char **files, size_t n)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (strlen(sock) >= sizeof sun.sun_path) {
		errno = ENAMETOOLONG;
		fail("socket path", sock);
	}
	strcpy(sun.sun_path, sock);
	for (size_t i = 0; i < n; i++) {
		int fd = open(files[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail("cannot open", files[i]);
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&sun, sizeof sun) < 0)
			fail("cannot connect to", sock);
		static const char cmd[] = "zFILDES";
		if (write(s, cmd, sizeof cmd) != (ssize_t)sizeof cmd)
			fail("cannot write to", sock);
		char one = 0;
		struct iovec iov = {.iov_base = &one, .iov_len = 1};
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} u;
		memset(&u, 0, sizeof u);
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = u.b,
		                    .msg_controllen = sizeof u.b};
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
		if (sendmsg(s, &mh, MSG_NOSIGNAL) != 1)
			fail("cannot send descriptor to", sock);
		char reply[512];
		size_t got = 0;
		for (;;) {
			ssize_t r = read(s, reply + got, sizeof reply - 1 - got);
			if (r < 0)
				fail("cannot read reply from", sock);
			got += (size_t)r;
			if (r == 0 || (got && reply[got - 1] == 0) || got == sizeof reply - 1)
				break;
		}
		reply[got] = 0;
		if (!strstr(reply, "OK") && !strstr(reply, "FOUND")) {
			fprintf(stderr, "floor: clamd said '%s' for %s\n", reply, files[i]);
			exit(1);
		}
		close(s);
		close(fd);
	}
	return 0;
}

static int run_fsync(const char *dir, size_t n)
{
	char a[1024], b[1024], f[2200], src[2100], dst[2100];
	snprintf(a, sizeof a, "%s/a", dir);
	snprintf(b, sizeof b, "%s/b", dir);
	if ((mkdir(a, 0750) < 0 && errno != EEXIST) || (mkdir(b, 0750) < 0 && errno != EEXIST))
		fail("cannot create", dir);
	static const char data[100] = "S<bench@example.org>\nR<rcpt@example.com>\nE\n";
	for (size_t i = 0; i < n; i++) {
		snprintf(src, sizeof src, "%s/%zu", a, i);
		snprintf(dst, sizeof dst, "%s/%zu", b, i);
		snprintf(f, sizeof f, "%s/verdicts", src);
		if (mkdir(src, 0750) < 0)
			fail("cannot create", src);
		int fd = open(f, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
		if (fd < 0 || write(fd, data, sizeof data) != (ssize_t)sizeof data || fsync(fd) < 0)
			fail("cannot write", f);
		close(fd);
		bench_fsync_path(src);
		if (rename(src, dst) < 0)
			fail("cannot rename", src);
		bench_fsync_path(a);
		bench_fsync_path(b);
	}
	return 0;
}

static int run_gmime(char **files, size_t n, const char *out)
{
	struct mime_limits lim = {
	    .max_message_size = 1ull << 30,
	    .max_parts = 1000,
	    .max_depth = 30,
	    .max_part_size = 1ull << 30,
	    .max_total_size = 4ull << 30,
	    .scan_raw = 1,
	    .mem_max = MIME_MEM_MAX,
	};
	mime_init();
	for (size_t i = 0; i < n; i++) {
		char d[4200], reason[512];
		snprintf(d, sizeof d, "%s/%zu", out, i);
		if (mkdir(d, 0750) < 0)
			fail("cannot create", d);
		int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			fail("cannot open", d);
		/* The raw part is a hard link to "message" in the work directory, as in the
		 * splitter; the corpus and OUT are on one filesystem. */
		if (linkat(AT_FDCWD, files[i], dfd, "message", 0) < 0)
			fail("cannot link", files[i]);
		int fd = openat(dfd, "message", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail("cannot open", files[i]);
		struct manifest m;
		manifest_init(&m);
		if (mime_extract(fd, "message", dfd, &lim, &m, reason, sizeof reason) != 0) {
			fprintf(stderr, "floor: %s: %s\n", files[i], reason);
			exit(1);
		}
		manifest_free(&m);
		close(fd);
		close(dfd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: floor exec NOOP LIST | fildes SOCK LIST | fsync DIR N | "
		                "gmime LIST OUT\n");
		return 64;
	}
	size_t n = 0;
	char **files = NULL;
	double t0 = now();
	if (strcmp(argv[1], "exec") == 0) {
		files = read_list(argv[3], &n);
		t0 = now();
		run_exec(argv[2], files, n);
	} else if (strcmp(argv[1], "fildes") == 0) {
		files = read_list(argv[3], &n);
		t0 = now();
		run_fildes(argv[2], files, n);
	} else if (strcmp(argv[1], "fsync") == 0) {
		n = strtoul(argv[3], NULL, 10);
		run_fsync(argv[2], n);
	} else if (strcmp(argv[1], "gmime") == 0) {
		files = read_list(argv[2], &n);
		t0 = now();
		run_gmime(files, n, argv[3]);
	} else {
		fprintf(stderr, "floor: unknown mode %s\n", argv[1]);
		return 64;
	}
	printf("%zu %.6f\n", n, now() - t0);
	return 0;
}
