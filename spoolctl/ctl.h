/*
 * spoolctl - shared declarations of the subcommands.
 *
 * Each subcommand lives in its own file as ctl_cmd_<name>(conf, argc, argv), where argv
 * holds the words after the subcommand, and returns the exit code. spoolctl.c dispatches
 * by name; a subcommand whose file is not linked in is reported as unknown.
 */
#ifndef SPOOLCTL_CTL_H
#define SPOOLCTL_CTL_H

#include "conf.h"
#include "spool.h"

typedef int ctl_cmd_fn(struct conf *c, int argc, char **argv);

/* Open the spool without creating it: a missing spool is the administrator's to fix, and
 * for inject a temporary failure (Postfix retries). Dies 75 when it is missing. */
void ctl_spool_open(const struct conf *c, struct spool *sp);
/* Print the usage text and exit 64. */
_Noreturn void ctl_usage(void);

ctl_cmd_fn ctl_cmd_inject;
ctl_cmd_fn ctl_cmd_status;
ctl_cmd_fn ctl_cmd_ls;
ctl_cmd_fn ctl_cmd_show;
ctl_cmd_fn ctl_cmd_requeue;
ctl_cmd_fn ctl_cmd_delete;
ctl_cmd_fn ctl_cmd_hold;
ctl_cmd_fn ctl_cmd_start;
ctl_cmd_fn ctl_cmd_stop;
ctl_cmd_fn ctl_cmd_restart;
ctl_cmd_fn ctl_cmd_pause;
ctl_cmd_fn ctl_cmd_resume;
ctl_cmd_fn ctl_cmd_quarantine;
ctl_cmd_fn ctl_cmd_flush;
ctl_cmd_fn ctl_cmd_fleet; /* fleet.c: the fleet's database */

/* hold/<qid> (claimed) back to scan/, its hold state and any manual hold removed, logged
 * and traced as done by "spoolctl <by>". Dies temporary on an I/O error. */
struct spool_entry;
void ctl_requeue_hold(const struct conf *c, struct spool_entry *e, const char *by);

#endif
