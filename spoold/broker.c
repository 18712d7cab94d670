/*
 * spoold/broker - start the scanner exec broker (lib/broker.h) while spoold is still
 * root, and notice its death.
 *
 * broker_spawn(c, runner_uid, runner_gid), called by spoold before it drops privileges:
 * when spoold is root and scanner_user is set, it makes an AF_UNIX SOCK_SEQPACKET
 * socketpair and forks the broker, which closes every inherited descriptor but its end
 * (the spool's directories, the lock, the control socket), becomes scanner_user for good
 * (user_become: setuid(0) must fail afterwards), dies with spoold (PR_SET_PDEATHSIG),
 * makes its private working directory under /tmp and serves requests from runner_uid.
 * spoold keeps the other end, close-on-exec, and hands it to every scanner-runner on
 * purpose (SPOOLD_SCAN_BROKER_FD). Returns that descriptor, or -1 when there is no broker
 * (no scanner_user; or not root, with a warning: the scanners run as the runner's own
 * uid, as before).
 *
 * broker_reaped(pid, status): 1 when pid was the broker. spoold then stops its stages
 * and exits 75: a broker that cannot be started again without root means no scanner can
 * run; the service manager restarts spoold as root, which starts a new broker.
 *
 * DIAGNOSTICS: scanner_user unknown, root, the spool's own user, or a member of the
 * spool's group dies 78 (a scanner user who can traverse the spool is no separation).
 * socketpair or fork failing dies 75. In the broker, a failing drop dies 75.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "broker.h"
#include "conf.h"
#include "log.h"
#include "user.h"
#include "util.h"

static pid_t broker_pid = -1;

/* The scanner user must be a user of its own: not root, not the spool's owner, and not
 * in the spool's group (the state directories are 0750 of that group). */
static void broker_user_check(const char *name, uid_t runner_uid, gid_t runner_gid)
{
	errno = 0;
	struct passwd *pw = getpwnam(name);
	if (pw == NULL)
		die_perm(EXIT_CONFIG, "scanner_user \"%s\": no such user", name);
	if (pw->pw_uid == 0 || pw->pw_uid == runner_uid)
		die_perm(EXIT_CONFIG,
		         "scanner_user \"%s\" is %s: the scanners must run as a user of their own",
		         name, pw->pw_uid == 0 ? "root" : "the spool's own user");
	gid_t groups[256];
	int ng = (int)ARRAY_LEN(groups);
	if (getgrouplist(name, pw->pw_gid, groups, &ng) < 0)
		die_perm(EXIT_CONFIG, "scanner_user \"%s\" is in more than %zu groups", name,
		         ARRAY_LEN(groups));
	for (int i = 0; i < ng && runner_gid != (gid_t)-1; i++)
		if (groups[i] == runner_gid)
			die_perm(EXIT_CONFIG,
			         "scanner_user \"%s\" is in the spool's group (gid %ld): it could "
			         "traverse the spool; give it a group of its own",
			         name, (long)runner_gid);
}

int broker_spawn(const struct conf *c, uid_t runner_uid, gid_t runner_gid)
{
	if (c->scanner_user == NULL || c->scanner_user[0] == '\0')
		return -1;
	if (geteuid() != 0) {
		/* Said once: the key asks for a separation this start cannot give. */
		log_warn(NULL,
		         "scanner_user = \"%s\" has no effect: spoold was not started as root, so "
		         "the scanners run as the scanner-runner's own user",
		         c->scanner_user);
		return -1;
	}
	broker_user_check(c->scanner_user, runner_uid, runner_gid);
	int sv[2];
	if (broker_socketpair(sv) < 0)
		die_temp(NULL, "cannot make the scanner broker's socket: %s", strerror(errno));
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		die_temp(NULL, "cannot fork the scanner broker: %s", strerror(errno));
	if (pid == 0) {
		/* Nothing of spoold's stays open in the broker: not the spool's directories,
		 * not run/spoold.lock (a broker holding it would keep a new spoold out). */
		closelog();
		if (sv[1] > 3)
			syscall(SYS_close_range, 3u, (unsigned)sv[1] - 1, 0u);
		syscall(SYS_close_range, (unsigned)sv[1] + 1, ~0u, 0u);
		/* Its own name in the log, and syslog's socket opened again if it is used. */
		log_init("scanner-broker");
		log_configure(c->log_target, c->log_level);
		user_become(c->scanner_user, (gid_t)-1);
		if (getuid() == 0 || geteuid() == 0 || setuid(0) == 0)
			die_temp(NULL, "scanner broker: still root after the drop");
		/* After the drop: a change of credentials clears the death signal. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			die_temp(NULL, "scanner broker: spoold has gone");
		char dir[] = "/tmp/spoold-scanner.XXXXXX";
		if (mkdtemp(dir) == NULL)
			die_temp(NULL, "scanner broker: cannot make %s: %s", dir, strerror(errno));
		broker_serve(sv[1], runner_uid, dir);
		if (rmdir(dir) < 0)
			log_warn(NULL, "scanner broker: cannot remove %s: %s", dir,
			         strerror(errno));
		_exit(0);
	}
	close(sv[1]);
	broker_pid = pid;
	log_info(NULL, "scanner broker (pid %ld) runs the scanners as %s", (long)pid,
	         c->scanner_user);
	return sv[0];
}

int broker_reaped(pid_t pid, int status)
{
	if (broker_pid < 0 || pid != broker_pid)
		return 0;
	broker_pid = -1;
	log_error(NULL,
	          "the scanner broker (pid %ld) died (%s %d); no scanner can run without it: "
	          "stopping, exit 75 (the service manager restarts spoold as root)",
	          (long)pid, WIFSIGNALED(status) ? "signal" : "exit",
	          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	return 1;
}
