/*
 * spoolctl start|stop|restart|pause|resume STAGE - talk to spoold over run/control.
 *
 * STAGE is splitter, scanner-runner, router or connectors (all its instances). Exit 0 when spoold
 * did it; 69 (EX_UNAVAILABLE) when spoold is not running; 75 when it did not answer in
 * time; 1 when spoold refused (its message is printed); 64 on usage errors.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "conf.h"
#include "control.h"
#include "ctl.h"
#include "log.h"
#include "util.h"

#define EXIT_UNAVAILABLE 69
/* restart and stop wait for the stage to finish its current message (up to 10 s). */
#define CTL_REPLY_TIMEOUT_MS 30000

static int ctl_control(struct conf *c, const char *cmd, int argc, char **argv)
{
	if (argc != 1)
		ctl_usage();
	struct buf reply;
	buf_init(&reply);
	if (control_request(c->spool_dir, cmd, argv[0], &reply, CTL_REPLY_TIMEOUT_MS) < 0) {
		int err = errno;
		buf_free(&reply);
		if (err == ENOENT || err == ECONNREFUSED) {
			fprintf(stderr,
			        "spoolctl: spoold is not running (no one listens on "
			        "%s/run/" CONTROL_NAME ": %s)\n",
			        c->spool_dir, strerror(err));
			return EXIT_UNAVAILABLE;
		}
		fprintf(stderr, "spoolctl: %s %s: %s/run/" CONTROL_NAME ": %s\n", cmd, argv[0],
		        c->spool_dir, strerror(err));
		return EXIT_TEMPFAIL;
	}
	const char *r = buf_cstr(&reply);
	int rc = 0;
	if (strncmp(r, "ok ", 3) == 0) {
		printf("%s\n", r + 3);
	} else {
		fprintf(stderr, "spoolctl: %s %s: %s\n", cmd, argv[0],
		        strncmp(r, "error ", 6) == 0 ? r + 6 : r);
		rc = 1;
	}
	buf_free(&reply);
	return rc;
}

int ctl_cmd_start(struct conf *c, int argc, char **argv)
{
	return ctl_control(c, "start", argc, argv);
}

int ctl_cmd_stop(struct conf *c, int argc, char **argv)
{
	return ctl_control(c, "stop", argc, argv);
}

int ctl_cmd_restart(struct conf *c, int argc, char **argv)
{
	return ctl_control(c, "restart", argc, argv);
}

int ctl_cmd_pause(struct conf *c, int argc, char **argv)
{
	return ctl_control(c, "pause", argc, argv);
}

int ctl_cmd_resume(struct conf *c, int argc, char **argv)
{
	return ctl_control(c, "resume", argc, argv);
}
