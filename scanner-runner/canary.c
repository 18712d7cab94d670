/*
 * canary - the scanner self-test: our answer to scanner output drift.
 *
 * Each scanner is checked at start, every canary_interval seconds, and when its version
 * string changes:
 *   - the EICAR test file must come back infected, with a virus name;
 *   - a clean file must come back clean;
 *   - a missing file must come back as an error (exec scanners only, see below).
 * A scanner that fails is degraded: it still runs (its verdicts stay on record), but
 * every part it scans also gets an error line "scanner degraded: <reason>", so its mail
 * is held (or covered by a backup scanner, as for any failed primary). A degraded
 * scanner is checked again every min(canary_interval, 30) seconds, so that it recovers
 * without waiting for a whole interval.
 *
 * Signature-database changes: for an exec scanner the runner cannot know where the
 * database is (it is somewhere in an argv template), so it watches the scanner's version
 * string instead (version_argv, e.g. "ClamAV 1.4.6/27471/..." carries the daily
 * database version) every VERSION_CHECK_MS (5 s: one short version_argv run, or one
 * VERSION request), and re-runs the canary when it changes. A
 * database change that leaves the version line alone (a --database= directory of one's
 * own, as in the tests) is caught only by the periodic check. For clamd the version is
 * clamd's VERSION reply, which carries the loaded database version.
 *
 * clamd has no missing-file check: the runner never gives clamd a path (FILDES passes a
 * descriptor, zINSTREAM the bytes), so "a file that does not exist" cannot be asked of
 * clamd; an unreadable descriptor would fail in our own client before clamd sees it, and
 * so would test clamd.c, not clamd.
 *
 * Health goes to run/scanners (atomically rewritten; read by spoolctl status):
 *   scanner name=<n> state=ok|degraded since=<unix> reason=<escaped>
 *   end
 * Every runner process writes the file after each check; with several runners, the last
 * check wins, which is the freshest knowledge. State changes are logged once each
 * (log_error when degraded), not once per message.
 *
 * The EICAR string is assembled at run time from two halves, so that no scanner flags
 * this program's binary or source.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clamd.h"
#include "log.h"
#include "runner.h"
#include "slot.h"
#include "spool.h"
#include "util.h"

#define VERSION_CHECK_MS    5000
#define DEGRADED_RECHECK_MS 30000

static const char canary_eicar_a[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-";
static const char canary_eicar_b[] = "ANTIVIRUS-TEST-FILE!$H+H*";
static const char canary_clean_text[] = "spoold canary: a plain, clean text file.\n";

#define CANARY_EICAR   "canary-eicar.com"
#define CANARY_CLEAN   "canary-clean.txt"
#define CANARY_MISSING "canary-missing.txt"

static int64_t canary_next_full_ms;
static int64_t canary_next_version_ms;

struct canary_dir {
	char name[64];
	char path[4096];
	int fd;
};

static int canary_file_write(int dirfd, const char *name, const char *a, const char *b)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0)
		return -1;
	if (write_all(fd, a, strlen(a)) < 0 || write_all(fd, b, strlen(b)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

/* A scratch directory tmp/canary.<pid> with the EICAR and the clean file. Scratch only:
 * nothing is fsync'd, a crash leaves debris that the next runner with this pid clears. */
static int canary_dir_make(struct stage *st, struct canary_dir *cd)
{
	int tmpfd = st->spool.fd[SD_TMP];
	snprintf(cd->name, sizeof cd->name, "canary.%ld", (long)getpid());
	snprintf(cd->path, sizeof cd->path, "%s/tmp/%s", st->spool.root, cd->name);
	cd->fd = -1;
	if (remove_tree_at(tmpfd, cd->name) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", cd->path, strerror(errno));
	if (mkdirat(tmpfd, cd->name, 0750) < 0 && errno != EEXIST) {
		log_warn(NULL, "cannot create %s: %s", cd->path, strerror(errno));
		return -1;
	}
	cd->fd = openat(tmpfd, cd->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cd->fd < 0) {
		log_warn(NULL, "cannot open %s: %s", cd->path, strerror(errno));
		return -1;
	}
	if (canary_file_write(cd->fd, CANARY_EICAR, canary_eicar_a, canary_eicar_b) < 0 ||
	    canary_file_write(cd->fd, CANARY_CLEAN, canary_clean_text, "") < 0) {
		log_warn(NULL, "cannot write the canary files in %s: %s", cd->path,
		         strerror(errno));
		return -1;
	}
	return 0;
}

static void canary_dir_remove(struct stage *st, struct canary_dir *cd)
{
	if (cd->fd >= 0)
		close(cd->fd);
	cd->fd = -1;
	if (remove_tree_at(st->spool.fd[SD_TMP], cd->name) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", cd->path, strerror(errno));
}

/* One exec check. 0 if the scanner answered as wanted, else -1 with reason. */
static int canary_exec_one(struct stage *st, struct runner_scanner *rs, struct canary_dir *cd,
                           const char *file, enum verdict want, char *reason, size_t rlen)
{
	const struct conf_scanner *sc = rs->conf;
	struct exec_result res;
	char exits[64], virus[256];
	char *path = xasprintf("%s/%s", cd->path, file);
	char **argv = runner_argv(sc, cd->path, path, NULL);
	runner_exec_slotted(st, sc, argv, cd->path, NULL, &res);
	enum verdict v = runner_map(rs, &res);
	exec_result_describe(&res, exits, sizeof exits);
	runner_virus_name(rs, buf_cstr(&res.output), NULL, virus, sizeof virus);
	int ok = v == want;
	if (want == V_INFECTED && !virus[0])
		ok = 0; /* a detection we cannot name is drift too */
	if (want == V_ERROR && res.timed_out)
		ok = 0; /* a missing file must be refused, not hang the scanner */
	if (!ok) {
		struct buf out;
		buf_init(&out);
		escape_bytes(&out, res.output.data ? res.output.data : "", res.output.len, 120);
		snprintf(reason, rlen, "%s: want %s, got %s%s (exit=%s output=%s)", file,
		         verdict_name(want), verdict_name(v),
		         want == V_INFECTED && v == V_INFECTED ? " with no virus name" : "", exits,
		         buf_cstr(&out));
		buf_free(&out);
	}
	exec_result_free(&res);
	runner_argv_free(argv);
	free(path);
	return ok ? 0 : -1;
}

static int canary_clamd_one(struct stage *st, struct runner_scanner *rs, struct canary_dir *cd,
                            const char *file, enum verdict want, char *reason, size_t rlen)
{
	const struct conf_scanner *sc = rs->conf;
	struct clamd_result r;
	struct clamd_policy pol;
	int fd = openat(cd->fd, file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		snprintf(reason, rlen, "%s: cannot open %.200s/%s: %s", file, cd->path, file,
		         strerror(errno));
		return -1;
	}
	int slot = slot_acquire(&st->spool, sc->name, sc->max_concurrent);
	if (slot < 0)
		die_temp(NULL, "cannot take a slot for scanner %s in %s/slots: %s", sc->name,
		         st->spool.root, strerror(errno));
	clamd_policy_init(&pol, sc);
	clamd_scan_fd_any(sc->clamd_addrs, fd, &pol, sc->timeout * 1000, &r);
	slot_release(slot);
	close(fd);
	int ok = r.verdict == want && (want != V_INFECTED || r.virus[0]);
	if (!ok) {
		struct buf out;
		buf_init(&out);
		escape_bytes(&out, r.reply, strlen(r.reply), 200);
		snprintf(reason, rlen, "%s: want %s, got %s (addr=%s reply=%s)", file,
		         verdict_name(want), verdict_name(r.verdict), r.addr, buf_cstr(&out));
		buf_free(&out);
	}
	return ok ? 0 : -1;
}

/* Run the checks in order and stop at the first failure: a scanner that hangs on EICAR
 * costs one timeout, not three. */
static int canary_check(struct stage *st, struct runner_scanner *rs, struct canary_dir *cd,
                        char *reason, size_t rlen)
{
	if (rs->conf->type == SCANNER_CLAMD) {
		if (canary_clamd_one(st, rs, cd, CANARY_EICAR, V_INFECTED, reason, rlen) < 0)
			return -1;
		return canary_clamd_one(st, rs, cd, CANARY_CLEAN, V_CLEAN, reason, rlen);
	}
	if (canary_exec_one(st, rs, cd, CANARY_EICAR, V_INFECTED, reason, rlen) < 0)
		return -1;
	if (canary_exec_one(st, rs, cd, CANARY_CLEAN, V_CLEAN, reason, rlen) < 0)
		return -1;
	return canary_exec_one(st, rs, cd, CANARY_MISSING, V_ERROR, reason, rlen);
}

static void canary_set(struct runner_scanner *rs, int ok, const char *reason)
{
	int64_t now = now_us_wall() / 1000000;
	const char *name = rs->conf->name;
	if (!ok) {
		if (!rs->degraded || !rs->checked) {
			rs->since = now;
			/* Loud, and once per state change: every message it scans is held now. */
			log_error(
			    NULL,
			    "scanner %s failed its canary and is degraded; its mail is held: %s",
			    name, reason);
		}
		rs->degraded = 1;
		snprintf(rs->reason, sizeof rs->reason, "%s", reason);
	} else {
		if (rs->degraded || !rs->checked) {
			rs->since = now;
			if (rs->degraded)
				log_error(NULL,
				          "scanner %s passed its canary again; no longer degraded",
				          name);
			else
				log_info(NULL, "scanner %s passed its canary (version %s)", name,
				         rs->version);
		}
		rs->degraded = 0;
		rs->reason[0] = '\0';
	}
	rs->checked = 1;
}

static void canary_health_write(struct stage *st, struct runner_scanner *sc, size_t n)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < n; i++) {
		buf_addstr(&b, "scanner");
		kv_addstr(&b, "name", sc[i].conf->name);
		kv_addstr(&b, "state",
		          !sc[i].conf->canary ? "unchecked"
		          : sc[i].degraded    ? "degraded"
		                              : "ok");
		buf_printf(&b, " since=%lld", (long long)sc[i].since);
		kv_addstr(&b, "reason", sc[i].reason);
		buf_addstr(&b, "\n");
	}
	buf_addstr(&b, "end\n");
	/* tmp + rename: a reader sees the old file or the new one, never half of one. No
	 * directory fsync: this is a status display, rebuilt by the next check after a crash. */
	if (write_file_atomic(st->spool.fd[SD_RUN], "scanners", b.data, b.len, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/scanners: %s", st->spool.root, strerror(errno));
	buf_free(&b);
}

/* Check the scanners whose want[] is set (all when want is NULL). */
static void canary_run(struct stage *st, struct runner_scanner *sc, size_t n, const int *want)
{
	struct canary_dir cd;
	int made = canary_dir_make(st, &cd);
	for (size_t i = 0; i < n && !stage_stopping(); i++) {
		/* canary = false in the config: the administrator chose a scanner that cannot
		 * pass (a no-op in a benchmark); it is shown as "unchecked", never degraded. */
		if ((want && !want[i]) || !sc[i].conf->canary)
			continue;
		char reason[512];
		int ok;
		if (made < 0) {
			snprintf(reason, sizeof reason, "cannot write the canary files in %.300s",
			         cd.path);
			ok = 0;
		} else {
			ok = canary_check(st, &sc[i], &cd, reason, sizeof reason) == 0;
		}
		canary_set(&sc[i], ok, reason);
		int64_t again = (int64_t)st->conf->canary_interval * 1000;
		if (again <= 0 || again > DEGRADED_RECHECK_MS)
			again = DEGRADED_RECHECK_MS;
		sc[i].next_recheck_ms = now_ms_monotonic() + again;
	}
	canary_dir_remove(st, &cd);
	canary_health_write(st, sc, n);
}

void canary_start(struct stage *st, struct runner_scanner *sc, size_t n)
{
	canary_run(st, sc, n, NULL);
	int64_t now = now_ms_monotonic();
	canary_next_full_ms = now + (int64_t)st->conf->canary_interval * 1000;
	canary_next_version_ms = now + VERSION_CHECK_MS;
}

void canary_tick(struct stage *st, struct runner_scanner *sc, size_t n)
{
	int64_t now = now_ms_monotonic();
	int64_t interval = (int64_t)st->conf->canary_interval * 1000;
	if (interval > 0 && now >= canary_next_full_ms) {
		canary_run(st, sc, n, NULL);
		canary_next_full_ms = now_ms_monotonic() + interval;
		return;
	}
	int *want = xcalloc(n ? n : 1, sizeof *want);
	int any = 0;
	if (now >= canary_next_version_ms) {
		for (size_t i = 0; i < n; i++) {
			char v[sizeof sc[i].version];
			runner_version_fetch(&sc[i], v, sizeof v);
			if (strcmp(v, sc[i].version) != 0) {
				log_info(NULL,
				         "scanner %s version changed from \"%s\" to \"%s\"; "
				         "running its canary",
				         sc[i].conf->name, sc[i].version, v);
				memcpy(sc[i].version, v, sizeof v);
				want[i] = any = 1;
			}
		}
		canary_next_version_ms = now_ms_monotonic() + VERSION_CHECK_MS;
	}
	/* Degraded scanners are looked at more often, but only when periodic checks are on:
	 * canary_interval = 0 means "at start and on version changes only". */
	for (size_t i = 0; i < n && interval > 0; i++)
		if (sc[i].degraded && now >= sc[i].next_recheck_ms)
			want[i] = any = 1;
	if (any)
		canary_run(st, sc, n, want);
	free(want);
}
