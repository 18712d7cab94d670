/*
 * spoolctl - inspect and operate the spool. Each subcommand is in its own file; see
 * ctl.h. The config file is -c, else $SPOOLD_CONF, else /etc/spoold/spoold.conf.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "log.h"
#include "spool.h"
#include "user.h"
#include "util.h"
#include "version.h"

void ctl_usage(void)
{
	die_perm(EXIT_USAGE,
	         "usage: spoolctl [-c CONFIG] COMMAND ... | spoolctl --version\n"
	         "  status [--json]                   queues and stages\n"
	         "  inject -f SENDER RCPT... < msg    queue a message with an envelope\n"
	         "  ls QUEUE [--json]                 messages in a queue\n"
	         "  show ID                           where a message is, and its trace\n"
	         "  requeue ID | delete ID | hold ID\n"
	         "  requeue --all hold|badmail [--from PAT] [--to PAT] [--reason PAT]\n"
	         "  flush hold | flush outbox/CONNECTOR retry now what waits on a back-off\n"
	         "  start|stop|restart|pause|resume STAGE\n"
	         "  quarantine list [--json] | show ID | release ID | delete ID | expire\n"
	         "  fleet init | node NAME ROLE | expire [--days N]   the fleet's database\n"
	         "  fleet search [--from A] [--to A] [--subject S] [--qid Q] [--message-id M]\n"
	         "               [--state S] [--since N[smhd]] [--node N] [--limit N] [--json]\n"
	         "  fleet release|delete QID [--node N] [--wait N[smhd]]");
}

void ctl_spool_open(const struct conf *c, struct spool *sp)
{
	struct stat st;
	if (stat(c->spool_dir, &st) < 0)
		die_temp(NULL, "spool %s: %s", c->spool_dir, strerror(errno));
	spool_open(sp, c->spool_dir, 0);
}

/* Commands that only read (status, ls, show, quarantine list|show) and those that go
 * through the control socket (whose mode and group decide) are for anyone who can read;
 * every other command changes the spool. */
static int ctl_changes_spool(const char *cmd, int argc, char **argv)
{
	static const char *const readers[] = {"status",  "ls",    "show",   "start", "stop",
	                                      "restart", "pause", "resume", "fleet"};
	for (size_t k = 0; k < ARRAY_LEN(readers); k++)
		if (strcmp(cmd, readers[k]) == 0)
			return 0;
	if (strcmp(cmd, "quarantine") == 0 && argc > 0 &&
	    (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "show") == 0))
		return 0;
	return 1;
}

/* Only root (who has become the spool's user by now) and the spool's user change the
 * spool: the stages trust what that user writes (a `release` marker above all), and a
 * file made by anyone else could be one no stage may read. The spool's user is `user`, or
 * with none configured, whoever owns the spool directory. */
static void ctl_require_admin(const struct conf *c, const char *cmd, int argc, char **argv)
{
	if (!ctl_changes_spool(cmd, argc, argv))
		return;
	uid_t me = geteuid();
	uid_t admin = c->roles[ROLE_SPOOL].uid;
	struct stat st;
	if (admin == (uid_t)-1 && stat(c->spool_dir, &st) == 0)
		admin = st.st_uid;
	if (me == 0 || me == admin || admin == (uid_t)-1)
		return;
	die_perm(EXIT_NOPERM,
	         "spoolctl %s changes the spool: run it as root or as the spool's user (uid %ld), "
	         "not as uid %ld",
	         cmd, (long)admin, (long)me);
}

int main(int argc, char **argv)
{
	const char *conf_path = getenv("SPOOLD_CONF");
	if (conf_path == NULL)
		conf_path = "/etc/spoold/spoold.conf";
	log_init("spoolctl");
	/* What spoolctl writes into the spool (queue files, markers, moved entries) must be
	 * readable by the stages, which in a separated spool are other users of the spool's
	 * group: the caller's umask (Postfix's pipe(8) runs it with 077) must not make it
	 * 0600. Nothing is made world-readable. */
	umask(027);
	int i = 1;
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
			conf_path = argv[i + 1];
			i += 2;
		} else if (strcmp(argv[i], "--version") == 0) {
			version_print_exit("spoolctl");
		} else {
			ctl_usage();
		}
	}
	if (i >= argc)
		ctl_usage();
	const char *cmd = argv[i++];
	char err[2048];
	struct conf *c = conf_try_load(conf_path, err, sizeof err);
	if (c == NULL) {
		/* A typo in the config must never bounce mail: Postfix's pipe(8) turns 75 into a
		 * deferral and retries, while 78 would bounce every message with 5.3.5 and send
		 * an NDR to each sender. Every other command fails permanently: the
		 * administrator has to see the broken file. */
		if (strcmp(cmd, "inject") == 0)
			die_temp(NULL, "the config file is broken, deferring: %s", err);
		die_perm(EXIT_CONFIG, "the config file is broken: %s", err);
	}
	/* Run as root, spoolctl becomes the spool's user before it touches anything, so that
	 * every file it makes (a queue file, a marker, a moved entry) belongs to that user
	 * and the stages can read it. */
	user_become(c->user, (gid_t)-1);
	ctl_require_admin(c, cmd, argc - i, argv + i);
	static const struct {
		const char *name;
		ctl_cmd_fn *fn;
	} cmds[] = {
	    {"inject", ctl_cmd_inject},
	    {"status", ctl_cmd_status},
	    {"ls", ctl_cmd_ls},
	    {"show", ctl_cmd_show},
	    {"requeue", ctl_cmd_requeue},
	    {"delete", ctl_cmd_delete},
	    {"hold", ctl_cmd_hold},
	    {"start", ctl_cmd_start},
	    {"stop", ctl_cmd_stop},
	    {"restart", ctl_cmd_restart},
	    {"pause", ctl_cmd_pause},
	    {"resume", ctl_cmd_resume},
	    {"quarantine", ctl_cmd_quarantine},
	    {"flush", ctl_cmd_flush},
	    {"fleet", ctl_cmd_fleet},
	};
	for (size_t k = 0; k < ARRAY_LEN(cmds); k++) {
		if (strcmp(cmd, cmds[k].name) == 0) {
			int rc = cmds[k].fn(c, argc - i, argv + i);
			conf_free(c);
			return rc;
		}
	}
	ctl_usage();
}
