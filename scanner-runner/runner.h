/*
 * runner.h - what runner.c (the scanning stage) and canary.c (the scanner self-test)
 * share inside the scanner-runner program. Not a library contract: lib/ is that.
 */
#ifndef SPOOLD_RUNNER_H
#define SPOOLD_RUNNER_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "exec.h"
#include "manifest.h"
#include "stage.h"
#include "verdict.h"

struct runner_scanner {
	const struct conf_scanner *conf;
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

/* Build a scanner's argv: {file} is file, {dir} is dir, and a word that is exactly
 * {files} becomes one word per part of m (or the one file when m is NULL). Through the
 * scanner broker (runner_broker_fd >= 0) every file is named by its descriptor instead,
 * "/dev/fd/N" for the Nth of runner_files(), and {dir} is "." (the scanner's private
 * directory: the message's own is out of its reach). */
char **runner_argv(const struct conf_scanner *sc, const char *dir, const char *file,
                   const struct manifest *m);
/* The paths of the files a run scans, in the order runner_argv numbers them: every part
 * of m, or the one file. NULL-terminated; free with runner_argv_free. */
char **runner_files(const char *dir, const char *file, const struct manifest *m, size_t *n);
/* The scanner broker's descriptor (SPOOLD_SCAN_BROKER_FD), or -1: scanners run here. */
extern int runner_broker_fd;
void runner_argv_free(char **v);
void runner_argv_escape(char **v, struct buf *out);
/* Run argv holding one of the scanner's slots (never passed to the child); cwd is the
 * workdir or dir. No slot free within scanner_runner.slot_wait: res->not_started, an
 * error for runner_map. Dies temporary (75) if the slot files fail or fork fails. */
void runner_exec_slotted(struct stage *st, const struct conf_scanner *sc, char **argv, char **files,
                         const char *dir, const char *qid, struct exec_result *res);
/* clean / infected only for a mapped exit code of a reaped child whose output was read in
 * full; everything else (truncated output, wait or exec failure, no slot) is V_ERROR. */
enum verdict runner_map(const struct runner_scanner *rs, const struct exec_result *res);
/* The virus name from the first output line the regex matches (and that contains only,
 * if only is not NULL); "" if none. */
void runner_virus_name(const struct runner_scanner *rs, const char *out, const char *only,
                       char *name, size_t len);
/* The scanner's version line now ("unknown" if it cannot be had). */
void runner_version_fetch(const struct runner_scanner *rs, char *out, size_t len);

/* canary.c: the start-up check of every scanner (call once scanners are set up). */
void canary_start(struct stage *st, struct runner_scanner *sc, size_t n);
/* The periodic part; call from the stage tick. */
void canary_tick(struct stage *st, struct runner_scanner *sc, size_t n);

#endif
