/*
 * clock - time read and time waited: the monotonic clock for deadlines and intervals, the
 * wall clock for time stamps, and an alarm that interrupts one blocking call.
 *
 * The clocks cannot fail on Linux for the clock ids used. The alarm owns SIGALRM and
 * ITIMER_REAL of the process while armed; nothing else in the programs uses either.
 */
#ifndef SPOOLD_CLOCK_H
#define SPOOLD_CLOCK_H

#include <stdint.h>

/* Monotonic and wall clocks. */
int64_t now_ms_monotonic(void);
int64_t now_us_wall(void);

/* A repeating SIGALRM whose only job is to interrupt one blocking call (installed without
 * SA_RESTART), for a lock that cannot wait with a timeout itself: flock(2) in lib/slot.c.
 * Arm it right before the call and disarm it right after. (The stages' loop waits with a
 * timerfd: lib/stage.h.) */
void alarm_interval_arm(int first_ms, int every_ms);
void alarm_interval_disarm(void);

#endif
