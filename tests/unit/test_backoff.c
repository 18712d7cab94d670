// links: router/hold.c
/*
 * test_backoff - the hold back-off (router/hold.c) as tables of cases: hold_schedule
 * (first, attempts, next, delay, jitter), hold_expired and hold_due, with signed times
 * (a clock stepped back, records from the far past or the future, "never"), and the
 * record's text in both directions (hold_parse, hold_format).
 *
 * tests/unit/test_route.c checks the same functions one call after another; these
 * tables sweep the edges: every attempt count up to and past the cap, every jitter
 * value at the bound, now at 0 and near the end of time.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "router.h"

#define NOW  1800000000LL
#define DAY  86400LL
#define MIN  60LL
#define MAX  3600LL
#define HOLD (5 * DAY)
/* router.c's horizon: the longest back-off and its jitter, plus a minute. */
#define HORIZON (MAX + MAX / 4 + 60)

struct schedule_case {
	const char *name;
	struct hold_state before;
	int64_t now;
	unsigned rnd;
	/* after */
	uint64_t attempts;
	int64_t first;
	int64_t delay;
};

static const struct schedule_case schedule_cases[] = {
    {"fresh", {0, 0, 0, 0}, NOW, 0, 1, NOW, MIN},
    {"second", {1, NOW - 60, NOW, 0}, NOW, 0, 2, NOW - 60, 2 * MIN},
    {"third", {2, NOW - 180, NOW, 0}, NOW, 0, 3, NOW - 180, 4 * MIN},
    {"sixth", {5, NOW - 1, NOW, 0}, NOW, 0, 6, NOW - 1, 32 * MIN},
    {"seventh_capped", {6, NOW - 1, NOW, 0}, NOW, 0, 7, NOW - 1, MAX},
    {"many_capped", {1000, NOW - 1, NOW, 0}, NOW, 0, 1001, NOW - 1, MAX},
    {"huge_attempts_capped", {UINT64_MAX - 1, NOW - 1, NOW, 0}, NOW, 0, UINT64_MAX, NOW - 1, MAX},
    /* jitter: rnd modulo a quarter of the delay, plus one */
    {"jitter_small", {0, 0, 0, 0}, NOW, 7, 1, NOW, MIN + 7},
    {"jitter_wraps", {0, 0, 0, 0}, NOW, MIN / 4 + 1, 1, NOW, MIN},
    {"jitter_largest", {0, 0, 0, 0}, NOW, MIN / 4, 1, NOW, MIN + MIN / 4},
    {"jitter_capped_largest", {40, NOW - 1, NOW, 0}, NOW, MAX / 4, 41, NOW - 1, MAX + MAX / 4},
    {"jitter_max_rnd",
     {40, NOW - 1, NOW, 0},
     NOW,
     UINT32_MAX,
     41,
     NOW - 1,
     MAX + (int64_t)(UINT32_MAX % (MAX / 4 + 1))},
    /* first: unknown or in the future restarts the age at now; a past one is kept */
    {"first_unknown", {3, 0, 0, 0}, NOW, 0, 4, NOW, 8 * MIN},
    {"first_negative", {0, -5, 0, 0}, NOW, 0, 1, NOW, MIN},
    {"first_future", {1, NOW + 7 * DAY, NOW + 7 * DAY, 0}, NOW, 0, 2, NOW, 2 * MIN},
    {"first_far_future", {1, INT64_MAX, INT64_MAX, 0}, NOW, 0, 2, NOW, 2 * MIN},
    {"first_far_past", {1, 1, 1, 0}, NOW, 0, 2, 1, 2 * MIN},
    {"first_is_now", {1, NOW, NOW, 0}, NOW, 0, 2, NOW, 2 * MIN},
};

struct expired_case {
	const char *name;
	int64_t first, now;
	int want;
};

static const struct expired_case expired_cases[] = {
    {"young", NOW - 60, NOW, 0},
    {"at_max_hold", NOW - HOLD, NOW, 0},
    {"past_max_hold", NOW - HOLD - 1, NOW, 1},
    {"far_past", 1, NOW, 1},
    {"unknown", 0, NOW, 0},
    {"negative", -1, NOW, 0},
    {"future", NOW + 10, NOW, 0},
    {"far_future", INT64_MAX, NOW, 0},
    {"now_zero", 1, 0, 0},
    {"now_near_end_of_time", INT64_MAX - HOLD - 1, INT64_MAX, 1},
};

struct due_case {
	const char *name;
	int64_t next, now;
	int manual;
	int want;
};

static const struct due_case due_cases[] = {
    {"at_next", NOW, NOW, 0, 1},
    {"past_next", NOW - 1, NOW, 0, 1},
    {"far_past", 0, NOW, 0, 1},
    {"before_next", NOW + 1, NOW, 0, 0},
    {"at_horizon", NOW + HORIZON, NOW, 0, 0},
    {"beyond_horizon", NOW + HORIZON + 1, NOW, 0, 1},
    {"far_future", INT64_MAX - 1, NOW, 0, 1},
    {"never", INT64_MAX, NOW, 0, 0},
    {"manual_past", NOW - 1, NOW, 1, 0},
    {"manual_beyond_horizon", NOW + 30 * DAY, NOW, 1, 0},
    {"negative_now_not_due_early", NOW, -1, 0, 0},
};

struct parse_case {
	const char *name;
	const char *line;
	struct hold_state want;
};

static const struct parse_case parse_cases[] = {
    {"router",
     "hold attempts=3 first=1799990000 next=1800000100\n",
     {3, 1799990000, 1800000100, 0}},
    {"manual_never",
     "hold attempts=0 first=5 next=18446744073709551615 manual=1\n",
     {0, 5, INT64_MAX, 1}},
    {"next_past_int64_cut",
     "hold attempts=1 first=1 next=9223372036854775808\n",
     {1, 1, INT64_MAX, 0}},
    {"manual_not_1", "hold attempts=1 first=1 next=2 manual=yes\n", {1, 1, 2, 0}},
    {"negative_is_junk", "hold attempts=1 first=-5 next=-1\n", {1, 0, 0, 0}},
    {"overflow_is_junk", "hold attempts=99999999999999999999 first=1 next=2\n", {0, 1, 2, 0}},
    {"not_a_record", "held attempts=3 first=1 next=2\n", {0, 0, 0, 0}},
    {"empty", "", {0, 0, 0, 0}},
    {"fields_in_any_order", "hold next=7 first=6 attempts=5\n", {5, 6, 7, 0}},
};

static int state_is(const struct hold_state *h, const struct hold_state *w)
{
	if (h->attempts == w->attempts && h->first == w->first && h->next == w->next &&
	    h->manual == w->manual)
		return 1;
	printf("  got  attempts=%llu first=%lld next=%lld manual=%d\n",
	       (unsigned long long)h->attempts, (long long)h->first, (long long)h->next, h->manual);
	return 0;
}

int main(void)
{
	for (size_t i = 0; i < ARRAY_LEN(schedule_cases); i++) {
		const struct schedule_case *c = &schedule_cases[i];
		struct hold_state h = c->before;
		int64_t d = hold_schedule(&h, c->now, MIN, MAX, c->rnd);
		struct hold_state want = {c->attempts, c->first, c->now + c->delay,
		                          c->before.manual};
		CHECK_ROW("schedule", c->name, d == c->delay && state_is(&h, &want));
		/* Whatever the record said, the retry it schedules is not due at once and is
		 * due within the horizon. */
		CHECK_ROW("schedule_due_in_horizon", c->name,
		          !hold_due(&h, c->now, HORIZON) &&
		              hold_due(&h, c->now + HORIZON, HORIZON));
	}
	for (size_t i = 0; i < ARRAY_LEN(expired_cases); i++) {
		const struct expired_case *c = &expired_cases[i];
		struct hold_state h = {.attempts = 1, .first = c->first, .next = 0};
		CHECK_ROW("expired", c->name, hold_expired(&h, c->now, HOLD) == c->want);
	}
	for (size_t i = 0; i < ARRAY_LEN(due_cases); i++) {
		const struct due_case *c = &due_cases[i];
		struct hold_state h = {
		    .attempts = 1, .first = 1, .next = c->next, .manual = c->manual};
		CHECK_ROW("due", c->name, hold_due(&h, c->now, HORIZON) == c->want);
	}
	for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct hold_state h;
		memset(&h, 0x5a, sizeof h);
		hold_parse(c->line, &h);
		CHECK_ROW("parse", c->name, state_is(&h, &c->want));
		/* What the router writes reads back the same (manual=1 is spoolctl's). */
		if (c->want.manual)
			continue;
		struct buf b;
		struct hold_state again;
		buf_init(&b);
		hold_format(&h, &b);
		hold_parse(buf_cstr(&b), &again);
		CHECK_ROW("format_roundtrip", c->name, state_is(&again, &h));
		buf_free(&b);
	}
	return failures ? 1 : 0;
}
