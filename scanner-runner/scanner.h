/*
 * scanner - one configured scanner as the scanning stage (runner.c) and the self-test
 * (canary.c) see it: its health and version, and the backend that runs it, a small ops
 * table in the manner of OpenSMTPD's queue backends:
 *
 *   scanner_ops_per_attachment  scan_exec.c  one process per part (MailEnable's way)
 *   scanner_ops_per_message     scan_exec.c  one process for the parts of a message
 *   scanner_ops_clamd           farm.c       clamd spoken directly (clamd.c), a pool of
 *                                            addresses and a verdict cache
 *
 * Each backend scans the parts of one message (scan), checks one canary file (check)
 * and says its version (version). What the backends share is here: the slot that bounds
 * a scanner's runs across every runner process, the exit-code mapping and the virus-name
 * extraction of the exec backends, the scanner broker's descriptor, and the verdict line
 * with its log line and its histogram sample.
 *
 * Trust: a backend adds clean or infected only for an answer it got in full (an exec
 * child reaped with a mapped exit code and all of its output; a clamd reply that parsed
 * as a verdict); everything else is an error line, and the message is held.
 *
 * DIAGNOSTICS
 *   scanner_setup exits 78 (EXIT_CONFIG) on a virus_regex that does not compile.
 *   scanner_slot_take exits 75 when the slot files fail; no slot within
 *   scanner_runner.slot_wait is -1 and a reason, which the caller records as an error.
 *   A scanner's own failure is a verdict, never an exit.
 */
#ifndef SPOOLD_SCANNER_H
#define SPOOLD_SCANNER_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "exec.h"
#include "manifest.h"
#include "stage.h"
#include "verdict.h"

struct scanner;

/* One scanner's pass over one message: the parts it still owes a verdict, and where its
 * verdict lines go. */
struct scan_pass {
	struct stage *st;
	const char *qid;
	const char *dir; /* the parts' directory by path (the exec backends name files in it) */
	int dirfd;       /* the same directory, open (clamd opens the parts in it) */
	const struct manifest *m;
	unsigned char *todo; /* m->n_parts flags: 1 while that part has no verdict of this pass */
	int rounds;          /* runs of this scanner over the message so far */
	int backup;          /* recorded in every line: a backup scanner's turn */
	struct verdicts *vs;
};

/* What one canary file got back (scanner_ops.check). */
struct scanner_probe {
	enum verdict verdict;
	char virus[256];
	int timed_out; /* an exec child killed at its deadline: never a pass, even as an error */
	/* Set when the file could not even be asked about (clamd: it did not open): the
	 * whole reason, and the check fails. */
	char unasked[512];
	/* For a failed check's reason: "exit=... output=..." or "addr=... reply=...", with
	 * the scanner's own text escaped. */
	char detail[2048];
};

struct scanner_ops {
	const char *mode; /* the config's mode name */
	/* One run over parts still in p->todo: adds their verdict lines and clears their
	 * flags. Returns 1 when no part is left in todo. */
	int (*scan)(struct scanner *s, struct scan_pass *p);
	/* Scan the one file dir/file (dirfd open on dir) for the canary: through one clamd
	 * address addr (NULL for exec), never the pool nor the cache. */
	void (*check)(struct scanner *s, struct stage *st, const char *dir, int dirfd,
	              const char *file, const char *addr, struct scanner_probe *out);
	/* The scanner's version line now, "unknown" if it cannot be had. */
	void (*version)(const struct scanner *s, char *out, size_t len);
	/* Can a missing file be asked of it? Not of clamd: it gets descriptors or bytes. */
	int checks_missing;
};

extern const struct scanner_ops scanner_ops_per_attachment;
extern const struct scanner_ops scanner_ops_per_message;
extern const struct scanner_ops scanner_ops_clamd;

struct scanner {
	const struct conf_scanner *conf;
	const struct scanner_ops *ops;
	regex_t rx;
	int has_rx;
	char version[256];
	/* Canary state (canary.c). A degraded scanner still runs, but every part it scans
	 * also gets an error line "scanner degraded: <reason>", so its mail is held. */
	int checked; /* the canary has run at least once */
	int degraded;
	int64_t since; /* unix seconds of the last state change */
	char reason[512];
	int64_t next_recheck_ms; /* monotonic; when a degraded scanner is checked again */
};

/* Set s up for conf: its backend by mode, and its virus_regex compiled (conf_path names
 * the file in the error). Dies 78 on a regex that does not compile. */
void scanner_setup(struct scanner *s, const struct conf_scanner *conf, const char *conf_path);

/* The scanner broker's descriptor (SPOOLD_SCAN_BROKER_FD), or -1: exec scanners run here. */
extern int scanner_broker_fd;
/* Take the broker socket spoold handed over, if any (call once at start). */
void scanner_broker_init(void);

/* Take one of the scanner's slots (slots/<name>.<n>, at most max_concurrent held across
 * every runner), waiting up to scanner_runner.slot_wait. The descriptor, to give to
 * slot_release; -1 when none came free in time, with why saying so (logged, with qid).
 * Dies 75 when the slot files cannot be used. */
int scanner_slot_take(struct stage *st, const struct conf_scanner *sc, const char *qid, char *why,
                      size_t len);

/* Map an exec result: clean and infected only for an exit code listed as such, of a child
 * that was reaped with a status and whose output was read in full; everything else
 * (truncated output, timeout, signal, wait or exec failure, no slot) is V_ERROR. */
enum verdict scanner_exit_map(const struct conf_scanner *sc, const struct exec_result *res);
/* The virus name from the first output line that rx matches with its name group (group
 * 2 when the regex has two or more, else group 1), cut to len - 1 bytes; "" if none. */
void scanner_virus_name(const regex_t *rx, int has_rx, const char *out, char *name, size_t len);

/* The exit= of a verdict line for a part a backend did not scan on purpose: the clamd
 * backend's raw part once a decoded part of the message is infected (farm.c). The line
 * is an error (never clean) but no scanner failure: it calls for no backup scanner and
 * is no scanned part in the metrics. */
#define SCAN_EXIT_SKIPPED "skipped"

/* Add one verdict line of scanner s for part index to p->vs, marked backup as p says.
 * Logs it (with p->qid) when it is not clean and log_it is set. */
struct verdict_line *scan_pass_add(struct scan_pass *p, const struct scanner *s, int index,
                                   enum verdict v, const char *virus, const char *exit, long ms,
                                   const char *version, const char *argv, const char *output,
                                   int log_it);
/* One sample of spoold_scan_seconds{scanner} (one process, or one clamd batch). */
void scanner_observe(const struct conf_scanner *sc, long ms);

#endif
