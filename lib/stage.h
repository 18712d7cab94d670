/*
 * stage - the skeleton every pipeline stage plugs into (Postfix's trigger_server idea):
 * option parsing, config, spool, signals, start-up recovery, and the watch-then-scan loop.
 *
 * The loop: set the inotify watch, run recovery, scan the whole directory, then for each
 * wake-up handle the named entry; rescan on overflow and every rescan_interval. A stage
 * that is paused (SIGUSR1) finishes its current message and claims nothing new until
 * resumed (SIGUSR2). SIGTERM and SIGINT stop the loop between messages.
 *
 * Under spoold: once recovery is done the stage writes "ready\n" to the descriptor named
 * in $SPOOLD_READY_FD and closes it (spoold shows starting/ready); with $SPOOLD_PAUSED=1
 * it starts paused (spoold restarted it while its stage was paused).
 *
 * Options: -c FILE (config, default /etc/spoold/spoold.conf), --once (recover, scan once,
 * exit: for tests and batch use).
 */
#ifndef SPOOLD_STAGE_H
#define SPOOLD_STAGE_H

#include "conf.h"
#include "spool.h"

struct stage {
	const char *name;
	enum spool_dir watch_dir;
	/* At start, before the first scan: recover what a killed predecessor left. */
	void (*recover)(struct stage *st);
	/* Handle one name found in watch_dir. Returns 1 if it did work, 0 if not, -1 if the
	 * entry was busy (locked) and should be looked at again shortly. */
	int (*handle)(struct stage *st, const char *name);
	/* Called at least every tick_ms; may return a shorter wait in ms (or -1). */
	int (*tick)(struct stage *st);
	int tick_ms;
	/* Optional: commit what handle() prepared but did not commit yet (a stage that
	 * batches its commits). Called after every directory scan, before every wait for
	 * events, and before the stage stops. */
	void (*flush)(struct stage *st);
	struct conf *conf;
	struct spool spool;
	int once;
	void *ctx;
};

/* Parse argv, load config, open the spool, run the loop. Returns the exit code. */
int stage_main(struct stage *st, int argc, char **argv);
/* Readiness for spoold (SPOOLD_READY_FD): take the descriptor at start, notify once the
 * start-up recovery is done. stage_main does both; other programs spoold supervises (the
 * connectors) call them themselves. */
void stage_ready_take(void);
void stage_ready_notify(void);
/* Set when a stop was requested; long work checks it between units. */
int stage_stopping(void);
/* Set while paused (SIGUSR1): work in progress may finish, nothing new is claimed. */
int stage_is_paused(void);
/* Scan the watch directory and handle every name. Returns how many did work. */
int stage_scan(struct stage *st);

#endif
