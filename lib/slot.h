/*
 * slot - at most N concurrent scanner processes per scanner, across every runner process
 * on the spool, through flock(2) on slots/<scanner>.<n>.
 *
 * slot_acquire blocks (in flock, burning no CPU) until a slot is free and returns its
 * descriptor; pass it to the scanner child as exec_opts.keep_fd so the slot stays taken
 * while the child lives, even if the runner dies. slot_release closes it.
 */
#ifndef SPOOLD_SLOT_H
#define SPOOLD_SLOT_H

struct spool;

/* Returns the locked slot descriptor, or -1 with errno. */
int slot_acquire(struct spool *sp, const char *scanner, int max);
void slot_release(int fd);
/* Number of slots of this scanner held right now (for status). */
int slot_count_busy(struct spool *sp, const char *scanner, int max);

#endif
