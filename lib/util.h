/*
 * util - the clocks and the interrupting alarm; the other helpers are in their own
 * modules (alloc.h, buf.h, escape.h, fileio.h, strconv.h), included from here.
 */
#ifndef SPOOLD_UTIL_H
#define SPOOLD_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "alloc.h"
#include "buf.h"
#include "escape.h"
#include "fileio.h"
#include "strconv.h"

#define EXIT_USAGE    64 /* EX_USAGE */
#define EXIT_DATAERR  65 /* EX_DATAERR */
#define EXIT_TEMPFAIL 75 /* EX_TEMPFAIL: supervisor restarts */
#define EXIT_NOPERM   77 /* EX_NOPERM: not allowed for this user */
#define EXIT_CONFIG   78 /* EX_CONFIG */

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A repeating SIGALRM whose only job is to interrupt one blocking call (installed without
 * SA_RESTART), for a lock that cannot wait with a timeout itself: flock(2) in lib/slot.c.
 * Arm it right before the call and disarm it right after. (The stages' loop waits with a
 * timerfd: lib/stage.h.) */
void alarm_interval_arm(int first_ms, int every_ms);
void alarm_interval_disarm(void);

/* Monotonic and wall clocks. */
int64_t now_ms_monotonic(void);
int64_t now_us_wall(void);

#endif
