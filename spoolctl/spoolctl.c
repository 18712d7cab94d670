/*
 * spoolctl - inspect and operate the spool. Each subcommand is in its own file; see
 * ctl.h. The config file is -c, else $SPOOLD_CONF, else /etc/spoold/spoold.conf.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
	         "  quarantine list [--json] | show ID | release ID | delete ID | expire");
}

void ctl_spool_open(const struct conf *c, struct spool *sp)
{
	struct stat st;
	if (stat(c->spool_dir, &st) < 0)
		die_temp(NULL, "spool %s: %s", c->spool_dir, strerror(errno));
	spool_open(sp, c->spool_dir, 0);
}

int main(int argc, char **argv)
{
	const char *conf_path = getenv("SPOOLD_CONF");
	if (conf_path == NULL)
		conf_path = "/etc/spoold/spoold.conf";
	log_init("spoolctl");
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
