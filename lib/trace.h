/*
 * trace - the per-message event log that travels with the message (its "trace" file).
 *
 * Each event is one line, "<unix-time.ms> <prog> <event> k=v ...", appended with one
 * write(2) to a file opened O_APPEND, so concurrent writers never interleave. Values are
 * escaped with escape_bytes. Failing to append is a warning, not an error: the trace is
 * an aid, the spool state is the truth.
 */
#ifndef SPOOLD_TRACE_H
#define SPOOLD_TRACE_H

void trace_set_prog(const char *prog);
/* fmt produces the "event k=v ..." part. */
void trace_add(int dirfd, const char *qid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Several events, one per line of events (no trailing newline needed), with one time
 * stamp and one write: the lines of one step land together. */
void trace_add_lines(int dirfd, const char *qid, const char *events);

#endif
