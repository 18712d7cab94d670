/*
 * watch - inotify wake-ups for one directory, through libinotifytools.
 *
 * inotify is only a hint: a stage sets the watch, then scans the directory, and scans
 * again on WATCH_RESCAN (queue overflow) and on WATCH_TIMEOUT (periodic rescan). The
 * names it returns are candidates to look at, nothing more.
 */
#ifndef SPOOLD_WATCH_H
#define SPOOLD_WATCH_H

#include <stddef.h>

enum watch_event { WATCH_NAME, WATCH_RESCAN, WATCH_TIMEOUT, WATCH_INTR };

/* Watch dir for names that appear (moved in, closed after writing). Dies temp on failure. */
void watch_open(const char *dir);
/* Wait at most timeout_ms for an event. For WATCH_NAME, name holds the entry's name. */
enum watch_event watch_next(int timeout_ms, char *name, size_t len);

#endif
