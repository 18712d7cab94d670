/*
 * connector - the skeleton of a bundled delivery agent: drains outbox/<connector>/.
 *
 *   PROG [-c CONFIG] -n CONNECTOR [--once]
 *
 * For each complete entry (oldest first) whose retry time has come, it claims the entry
 * and calls deliver(). CONN_OK removes the entry (trash/), CONN_TEMP keeps it with an
 * exponential back-off, CONN_PERM turns it into a bounce record in badmail/; an entry
 * older than the connector's max_age is bounced too.
 *
 * A connector is a stage (lib/stage.h) on outbox/<connector>/: the skeleton's options
 * (-n NAME selects the connector), signals, pause, readiness, metrics and loop. inotify
 * wakes it up; an entry waiting for its retry is looked at again when its retry time
 * comes (stage_look_again), a locked one shortly (busy), and spoolctl flush (an event for
 * OUTBOX_FLUSH_NAME) makes it rescan at once. Delivery goes on when the spool is nearly
 * full: it only frees space.
 */
#ifndef SPOOLD_CONNECTOR_H
#define SPOOLD_CONNECTOR_H

#include <stddef.h>

#include "conf.h"
#include "envelope.h"
#include "outbox.h"

enum conn_result { CONN_OK, CONN_TEMP, CONN_PERM };

struct connector {
	const char *prog;
	enum connector_type type;
	/* msgfd: the entry's "message", open for reading at offset 0. reply: what the peer
	 * said, for the record. */
	enum conn_result (*deliver)(const struct conf_connector *cc, struct outbox_entry *e,
	                            const struct envelope *env, int msgfd, char *reply,
	                            size_t rlen);
	/* Optional: called while the loop waits for work (the stage's tick); returns the ms
	 * until it wants to be called again (to close an idle connection: connector-smtp), or
	 * -1. */
	int (*idle)(void);
};

int connector_main(const struct connector *cn, int argc, char **argv);

#endif
