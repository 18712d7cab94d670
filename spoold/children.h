/*
 * spoold's children (children.c): the table of stage instances, starting them (directly or
 * through a keeper), reaping them, the restart back-off and the "failed" rule, stopping
 * and signalling a stage, the readiness pipes, and the keepers started as root.
 */
#ifndef SPOOLD_CHILDREN_H
#define SPOOLD_CHILDREN_H

#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "conf.h"
#include "spool.h"
#include "spoold.h"

#define FAIL_DEATHS 5

enum child_state { CH_DOWN, CH_RUNNING, CH_BACKOFF, CH_FAILED, CH_STOPPED };

struct child {
	int si;     /* index into sup_stages */
	int keeper; /* the role whose keeper started it, or -1: spoold's own child */
	int idx;
	pid_t pid;
	enum child_state state;
	int ready;
	int ready_fd;       /* read end of the readiness pipe, -1 when none */
	int stopping;       /* we asked it to stop: its exit is not a death */
	int64_t started_ms; /* monotonic */
	time_t started_wall;
	int64_t restart_at;
	int delay_ms;
	int restarts;
	int64_t deaths[FAIL_DEATHS];
	int n_deaths;
};

struct stage_def {
	const char *name;
	int instances;
	int down;   /* run/down/<name> exists: not started until `spoolctl start` */
	int paused; /* SIGUSR1 sent; new instances start paused */
	int restarts;
};
/* ---- children.c: the state spoold.c reads ---- */

/* The supervised stages, N_STAGES of them in the order spoold.h gives. */
extern struct stage_def sup_stages[N_STAGES];
/* One entry per configured instance of every stage (sup_children_build). */
extern struct child *sup_children;
extern size_t sup_n;
/* The keeper of each role whose user is not spoold's own (fd -1: none). */
extern struct keeper sup_keepers[ROLE__COUNT];
/* Set when a keeper is gone: spoold stops, to be started again as root. */
extern int sup_keeper_lost;
/* Our end of the scanner broker's socket (spoold/broker.c), for the scanner-runners. */
extern int sup_broker_fd;
/* Set when the scanner broker died: spoold stops. */
extern int sup_broker_died;

/* ---- spoold.c: the state children.c reads ---- */

extern const char *sup_conf_path;
extern struct conf *sup_conf;
extern struct spool sup_spool;
/* The signal mask before spoold blocked its signals: a child starts with it. */
extern sigset_t sup_oldmask;
/* Where the stage binaries are. */
extern char sup_bindir[PATH_MAX];

/* ---- children.c ---- */

/* The name of a child state, as run/status shows it. */
const char *sup_state_name(enum child_state s);
/* The index into sup_stages of the stage called name, or -1. */
int sup_stage_lookup(const char *name);
/* How many connectors have a bundled delivery agent (type smtp or maildir). */
int sup_connector_count(const struct conf *c);
/* How many exporters run: 1 with a fleet group that names a database, else 0. */
int sup_exporters(const struct conf *c);
/* Create (create 1) or remove run/down/<stage>; -1 with errno on failure. */
int sup_down_file(const char *stage, int create);
/* Set every stage's instances and down flag from the config and run/down/. */
void sup_stage_defs(const struct conf *c);
/* Rebuild the child table for the current config; instances of stages not in
 * `rebuild` (a bitmask) are carried over unchanged from the old table. */
void sup_children_build(unsigned rebuild);
/* Start one instance; a failure puts it in back-off (logged). */
void sup_child_start(struct child *ch);
/* Reap every child that exited, and read what the keepers reported. */
void sup_reap(void);
/* Stop the instances of the stages in mask (all: ~0u) and wait for them. */
void sup_stop(unsigned mask);
/* Start every instance of stage si that is not running, with a fresh back-off. */
void sup_start_stage(int si);
/* Send sig to every running instance of stage si. */
void sup_signal_stage(int si, int sig);
/* Fill pfd with the open readiness pipes (at most max), map[k] the child of pfd[k];
 * returns how many. */
int sup_ready_poll(struct pollfd *pfd, size_t *map, size_t max);
/* Read a child's readiness pipe; 1 when it was closed (ready or gone), else 0. */
int sup_ready_read(struct child *ch);
/* Tell systemd READY=1 once, when every running child is ready. */
void sup_maybe_notify_ready(void);
/* As root, before the drop: the keepers and the stage binaries opened for them. */
void sup_keepers_start(uid_t spool_uid);

#endif
