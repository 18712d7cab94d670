/*
 * clock - see clock.h.
 */
#include "clock.h"

#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int64_t now_ms_monotonic(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_us_wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void alarm_on_signal(int sig)
{
	(void)sig; /* only there to interrupt the call */
}

void alarm_interval_arm(int first_ms, int every_ms)
{
	static int installed;
	if (!installed) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = alarm_on_signal;
		sigemptyset(&sa.sa_mask);
		sa.sa_flags = 0; /* no SA_RESTART: interrupting the wait is the point */
		sigaction(SIGALRM, &sa, NULL);
		installed = 1;
	}
	struct itimerval it;
	if (first_ms < 1)
		first_ms = 1;
	it.it_value.tv_sec = first_ms / 1000;
	it.it_value.tv_usec = (first_ms % 1000) * 1000;
	it.it_interval.tv_sec = every_ms / 1000;
	it.it_interval.tv_usec = (every_ms % 1000) * 1000;
	setitimer(ITIMER_REAL, &it, NULL);
}

void alarm_interval_disarm(void)
{
	struct itimerval off;
	memset(&off, 0, sizeof off);
	setitimer(ITIMER_REAL, &off, NULL);
}
