/*
 * log - one line per event: "<prog>[<pid>]: <level> qid=<qid> <message> k=v ..."
 *
 * Output goes to stderr (journald-friendly, no timestamp) or to syslog. Every line about
 * a message carries its queue ID. Messages about syscalls end with "path: strerror".
 * When stderr is the journal (JOURNAL_STREAM names it), each line starts with its syslog
 * priority, <3> to <7>, which journald takes as the line's priority. Bytes outside
 * printable ASCII are written \xNN; spaces stay. Syslog messages go to /dev/log as
 * syslog(3) would send them (the test build takes another socket path from
 * $SPOOLD_TEST_SYSLOG_SOCKET); a syslog that cannot be reached drops them.
 *
 *   log_warn   - something failed, the program goes on.
 *   die_temp   - the environment is broken (disk, memory, spool): exit 75 so that the
 *                supervisor restarts us. Never used for bad input.
 *   die_perm   - configuration or usage error: exit 78 (config) or 64 (usage).
 *   log_panic  - an internal inconsistency: abort().
 */
#ifndef SPOOLD_LOG_H
#define SPOOLD_LOG_H

#include <stdnoreturn.h>
#include <sys/types.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };
enum log_target { LOG_TO_STDERR, LOG_TO_SYSLOG };

void log_init(const char *prog);
/* The real uid the program had at log_init: the operator, for the audit trail. */
uid_t log_caller(void);
void log_configure(enum log_target target, enum log_level level);
/* qid may be NULL */
void log_debug(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_info(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_warn(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_error(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An operator's action (release, requeue, delete, hold): logged like log_info, and also
 * to syslog (facility mail) with the caller's uid (log_caller) when the log goes to
 * standard error, which for spoolctl is the operator's terminal. */
void log_audit(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
noreturn void die_temp(const char *qid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
noreturn void die_perm(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
noreturn void log_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
