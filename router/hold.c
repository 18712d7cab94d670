/*
 * hold - the hold record of a held entry (docs/INTERNALS.md, state S4c), and the two
 * decisions the router makes from it: is the hold over (max_hold_time), is a retry due.
 *
 *   hold attempts=<n> first=<unix-time> next=<unix-time> [manual=1]
 *
 * first is when the entry was first held, next when it may be retried. spoolctl hold
 * writes manual=1 and next=UINT64_MAX: such a hold is never retried by the timer.
 *
 * Times are compared as signed 64-bit numbers and never subtracted unsigned: when the
 * clock steps back, a record written under the later clock has first and next in the
 * future. Such a hold must never expire early (an unsigned now - first would wrap to a
 * huge age and quarantine or, with hold_expiry_action = deliver, deliver it unscanned at
 * once), and a retry must not wait for the clock to catch up.
 *
 * hold_held_for answers "was this held for that scanner's errors, before it recovered?"
 * (router_tick retries such mail at once when run/recovered.<scanner> says the scanner
 * passed its canary again; lib/pool.h).
 *
 * DIAGNOSTICS
 *   None: an absent or malformed record reads as "never held" (attempts 0, first 0,
 *   next 0), which retries at once and starts the hold age afresh. Failing this way
 *   only ever rescans or holds longer; it never lets mail out.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "entry_names.h"
#include "router.h"
#include "verdict.h"

/* A time field: digits, cut to INT64_MAX (spoolctl's "never" is UINT64_MAX). */
static int64_t hold_time_field(const char *s, const char *key, struct buf *v)
{
	uint64_t u;
	if (kv_find(s, key, v) < 0 || parse_u64(buf_cstr(v), &u) < 0)
		return 0;
	return u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u;
}

void hold_parse(const char *s, struct hold_state *h)
{
	struct buf v;
	buf_init(&v);
	memset(h, 0, sizeof *h);
	if (strncmp(s, "hold ", 5) == 0) {
		if (kv_find(s, "attempts", &v) < 0 || parse_u64(buf_cstr(&v), &h->attempts) < 0)
			h->attempts = 0;
		h->first = hold_time_field(s, "first", &v);
		h->next = hold_time_field(s, "next", &v);
		h->manual = kv_find(s, "manual", &v) == 0 && strcmp(buf_cstr(&v), "1") == 0;
	}
	buf_free(&v);
}

void hold_read(int dirfd, struct hold_state *h)
{
	struct buf b;
	buf_init(&b);
	if (read_file_at(dirfd, ENTRY_HOLD, &b, 4096) == 0)
		hold_parse(buf_cstr(&b), h);
	else
		memset(h, 0, sizeof *h);
	buf_free(&b);
}

void hold_format(const struct hold_state *h, struct buf *out)
{
	buf_printf(out, "hold attempts=%llu first=%lld next=%lld\n",
	           (unsigned long long)h->attempts, (long long)h->first, (long long)h->next);
}

int hold_expired(const struct hold_state *h, int64_t now, int64_t max_hold)
{
	/* first > now: the clock stepped back since the hold began; its age is unknown and
	 * taken as zero, never as the wrapped difference. */
	if (h->first <= 0 || h->first > now)
		return 0;
	return now - h->first > max_hold;
}

int hold_due(const struct hold_state *h, int64_t now, int64_t horizon)
{
	if (h->manual || h->next == INT64_MAX)
		return 0;
	if (h->next <= now)
		return 1;
	/* A schedule is never further ahead than the longest back-off (horizon): a next
	 * beyond it was written under a clock that has since stepped back. Retry now (a
	 * rescan is always safe) instead of waiting for the clock to catch up. now >= 0 and
	 * next < INT64_MAX here, so the difference cannot overflow. */
	return now >= 0 && h->next - now > horizon;
}

int64_t hold_schedule(struct hold_state *h, int64_t now, int64_t retry_min, int64_t retry_max,
                      unsigned rnd)
{
	/* A first in the future (clock stepped back) restarts the hold age from now: the
	 * hold may last longer than max_hold_time, never shorter. */
	if (h->first <= 0 || h->first > now)
		h->first = now;
	h->attempts++;
	/* Exponential back-off with jitter, kept in the entry so a restart keeps the
	 * schedule. */
	int64_t delay = retry_min;
	for (uint64_t i = 1; i < h->attempts && delay < retry_max; i++)
		delay *= 2;
	if (delay > retry_max)
		delay = retry_max;
	delay += (int64_t)(rnd % (uint64_t)(delay / 4 + 1));
	h->next = now + delay;
	return delay;
}

int hold_held_for(int dirfd, const char *scanner, int64_t at)
{
	struct stat sb;
	struct verdicts vs;
	char reason[256];
	int hit = 0;
	/* The hold file is rewritten each time the entry is held: older than the recovery
	 * means held before it, so a retry never loops on mail held again since. */
	if (fstatat(dirfd, ENTRY_HOLD, &sb, AT_SYMLINK_NOFOLLOW) < 0 || (int64_t)sb.st_mtime >= at)
		return 0;
	verdicts_init(&vs);
	if (verdicts_read_at(dirfd, &vs, reason, sizeof reason) == 0)
		for (size_t i = 0; i < vs.n && !hit; i++)
			hit = vs.lines[i].verdict == V_ERROR &&
			      strcmp(vs.lines[i].scanner, scanner) == 0;
	verdicts_free(&vs);
	return hit;
}
