/*
 * stage - the skeleton every long-running pipeline program plugs into (Postfix's
 * trigger_server idea): option parsing, config, spool, signals, start-up recovery, and
 * the watch-then-scan loop. The splitter, the scanner-runner, the router and the
 * connectors are stages; spoold (the supervisor) and lmtpd (a socket server) are not.
 *
 * The loop is one poll(2) over three descriptors: a signalfd (SIGTERM, SIGINT, SIGUSR1,
 * SIGUSR2, blocked for the whole process), the eventfd of the inotify watcher thread
 * (lib/watch.h) and a timerfd armed for the earliest of the stage's deadlines: the next
 * rescan (rescan_interval), the next tick, the metrics flush (once a second), and the
 * names a handler asked to look at again (stage_look_again). So a wait ends exactly when
 * something is due, and no signal is used to interrupt a blocking call.
 *
 * The loop: set the inotify watch, run recovery, scan the whole directory, then for each
 * wake-up handle the named entry; rescan on overflow and every rescan_interval. A stage
 * that is paused (SIGUSR1) finishes its current message and claims nothing new until
 * resumed (SIGUSR2), then rescans. SIGTERM and SIGINT stop the loop between messages.
 * SIGHUP is ignored: spoold re-reads the config and restarts the stages it concerns.
 *
 * Under spoold: once recovery is done the stage writes "ready\n" to the descriptor named
 * in $SPOOLD_READY_FD and closes it (spoold shows starting/ready); with $SPOOLD_PAUSED=1
 * it starts paused (spoold restarted it while its stage was paused).
 *
 * Options: -c FILE (config, default /etc/spoold/spoold.conf), --once (recover, scan once,
 * handle what asked to be looked at again within 5 s, exit: for tests and batch use),
 * --version, and -n NAME for a stage that needs_instance (a connector: which connector of
 * the config it is).
 *
 * DIAGNOSTICS: a bad option exits 64; a config that does not load 78; a spool, watch,
 * signalfd or timerfd that cannot be set up exits 75. Inconsistencies panic.
 */
#ifndef SPOOLD_STAGE_H
#define SPOOLD_STAGE_H

#include "conf.h"
#include "spool.h"

struct stage {
	const char *name;
	enum spool_dir watch_dir;
	/* Optional: after the config is loaded and the spool opened, before signals, the watch
	 * and recovery: the program's own set-up. It may set dir_name and dir_fd to work on a
	 * directory that is not a fixed spool directory (a connector's outbox/<name>). */
	void (*init)(struct stage *st);
	/* At start, before the first scan: recover what a killed predecessor left. */
	void (*recover)(struct stage *st);
	/* Handle one name found in the directory. Returns 1 if it did work, 0 if not, -1 if
	 * the entry was busy (locked) and should be looked at again shortly. */
	int (*handle)(struct stage *st, const char *name);
	/* Called at least every tick_ms; may return a shorter wait in ms (or -1). */
	int (*tick)(struct stage *st);
	int tick_ms;
	/* Optional: commit what handle() prepared but did not commit yet (a stage that
	 * batches its commits). Called after every directory scan, before every wait for
	 * events, and before the stage stops. */
	void (*flush)(struct stage *st);
	/* The directory worked on, relative to the spool root, and its descriptor: set by
	 * init, or NULL for watch_dir. */
	const char *dir_name;
	int dir_fd;
	/* An event for this name (a dot name, never an entry) means "rescan now":
	 * spoolctl flush (lib/outbox.h, OUTBOX_FLUSH_NAME). NULL: none. */
	const char *rescan_name;
	/* 1: work even when the spool is nearly full (a connector frees space by working). */
	int work_when_full;
	/* 1: -n NAME is required; the name is in instance. */
	int needs_instance;
	const char *instance;
	const char *conf_path;
	struct conf *conf;
	struct spool spool;
	int once;
	void *ctx;
};

/* Parse argv, load config, open the spool, run the loop. Returns the exit code. */
int stage_main(struct stage *st, int argc, char **argv);
/* Readiness for spoold (SPOOLD_READY_FD): take the descriptor at start, notify once the
 * start-up recovery is done. stage_main does both. */
void stage_ready_take(void);
void stage_ready_notify(void);
/* Set when a stop was requested; long work checks it between units. */
int stage_stopping(void);
/* Set while paused (SIGUSR1): work in progress may finish, nothing new is claimed. */
int stage_is_paused(void);
/* Scan the watch directory and handle every name. Returns how many did work. */
int stage_scan(struct stage *st);
/* Handle name again in delay_ms (it is not ready yet, and no event will say when it is:
 * a file resting for its quiet time, an outbox entry waiting for its retry time). The
 * list is bounded; past the bound a rescan at that time stands in for it. */
void stage_look_again(struct stage *st, const char *name, int64_t delay_ms);

#endif
