/*
 * watch - inotify wake-ups for one directory, through libinotifytools, as a descriptor.
 *
 * inotify is only a hint: a stage sets the watch, then scans the directory, and scans
 * again on WATCH_RESCAN (queue overflow, an inotify error) and periodically. The names
 * it returns are candidates to look at, nothing more.
 *
 * libinotifytools sets the watch; the events are read from its descriptor directly (found
 * once in /proc/self/fd), because inotifytools_next_event blocks in select() with no time
 * limit whenever its buffer is empty and its timeout is 0 or less, and a thread stuck
 * there cannot be stopped. One watcher thread polls that descriptor beside a stop
 * eventfd and queues the names; each queued name makes an eventfd readable, and the stage
 * polls that eventfd beside its signalfd and timerfd: one poll(2) loop, no signal to
 * interrupt a wait. The thread blocks every signal, so that no process-directed signal
 * (slot.c's SIGALRM, a stop request) is ever delivered to it instead of to the thread
 * that waits for it. Where the descriptor cannot be found, the thread asks
 * libinotifytools with a one-second limit, and so stops within a second or two.
 *
 * DIAGNOSTICS: watch_open dies temp when the watch cannot be set; an inotify read error in
 * the thread comes back as WATCH_RESCAN, logged by the caller's thread.
 */
#ifndef SPOOLD_WATCH_H
#define SPOOLD_WATCH_H

#include <stddef.h>

enum watch_event { WATCH_NAME, WATCH_RESCAN, WATCH_NONE };

/* Watch dir for names that appear (moved in, closed after writing, created) and start the
 * watcher thread. Returns the eventfd to poll for POLLIN. Dies temp on failure. */
int watch_open(const char *dir);
/* Take one queued event without waiting: WATCH_NAME (name holds it), WATCH_RESCAN (names
 * were lost: look at the whole directory), or WATCH_NONE (the queue is empty; the eventfd
 * has been drained first, so a name queued after this returns wakes the poll again). */
enum watch_event watch_take(char *name, size_t len);
/* Stop and join the watcher thread (a stage that stops); nothing when none runs. */
void watch_close(void);

#endif
