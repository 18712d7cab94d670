/*
 * crash - see crash.h.
 */
#include "crash.h"

#ifdef SPOOLD_CRASH_POINTS
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void crash_point(const char *name)
{
	const char *want = getenv("SPOOLD_CRASH_AT");
	if (want && strcmp(want, name) == 0) {
		static const char msg[] = "crash point reached, exiting\n";
		ssize_t w = write(2, msg, sizeof msg - 1);
		(void)w;
		_exit(99);
	}
}
#else
typedef int crash_points_disabled;
#endif
