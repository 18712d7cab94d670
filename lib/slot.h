/*
 * slot - at most N concurrent scanner processes per scanner, across every runner process
 * on the spool, through flock(2) on slots/<scanner>.<n>.
 *
 * slot_acquire_timed blocks (in flock, burning no CPU) until a slot is free or the
 * timeout passes, and returns the locked descriptor (O_CLOEXEC). The slot belongs to the
 * caller, never to the scanner child: the runner holds it while it runs and reaps the
 * child, and passes it on to nobody, so a grandchild that leaves the process group cannot
 * keep a slot (the child dies with the runner by PR_SET_PDEATHSIG, see exec.h).
 * slot_release closes it.
 *
 * DIAGNOSTICS
 *   -1 with errno: ETIMEDOUT when no slot came free in time, else the open/flock error.
 */
#ifndef SPOOLD_SLOT_H
#define SPOOLD_SLOT_H

struct spool;

/* Wait bound of slot_acquire. */
#define SLOT_WAIT_DEFAULT_MS (300 * 1000)

/* Returns the locked slot descriptor, or -1 with errno; timeout_ms <= 0: no bound. */
int slot_acquire_timed(struct spool *sp, const char *scanner, int max, int timeout_ms);
/* slot_acquire_timed with SLOT_WAIT_DEFAULT_MS. */
int slot_acquire(struct spool *sp, const char *scanner, int max);
void slot_release(int fd);
/* Number of slots of this scanner held right now (for status). */
int slot_count_busy(struct spool *sp, const char *scanner, int max);

#endif
