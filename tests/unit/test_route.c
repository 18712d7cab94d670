// links: router/hold.c
/*
 * test_route - unit test of the router's hold record and its two time decisions
 * (router/hold.c): expiry after max_hold_time and the retry timer, above all when the
 * clock has stepped back (a record from the future) or the record is from the far past.
 *
 * Prints one line per check, "PASS name" or "FAIL name: why", and exits 1 if any failed.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../router/router.h"
#include "check.h"

int main(void)
{
	const int64_t now = 1800000000, day = 86400, max_hold = 5 * day;
	const int64_t horizon = 3600 + 900 + 60;
	struct hold_state h;
	struct buf b;

	/* Parsing: the router's record, spoolctl's manual one, and junk. */
	hold_parse("hold attempts=3 first=1799990000 next=1800000100\n", &h);
	CHECK("parse",
	      h.attempts == 3 && h.first == 1799990000 && h.next == 1800000100 && !h.manual);
	hold_parse("hold attempts=0 first=1800000000 next=18446744073709551615 manual=1\n", &h);
	CHECK("parse_manual_never", h.manual && h.next == INT64_MAX && h.first == now);
	hold_parse("hold attempts=x first=-5 next=99999999999999999999999\n", &h);
	CHECK("parse_junk_is_zero", h.attempts == 0 && h.first == 0 && h.next == 0);
	hold_parse("nothing here", &h);
	CHECK("parse_no_record", h.attempts == 0 && h.first == 0 && h.next == 0 && !h.manual);
	buf_init(&b);
	h = (struct hold_state){.attempts = 2, .first = 1, .next = now};
	hold_format(&h, &b);
	CHECK("format", strcmp(buf_cstr(&b), "hold attempts=2 first=1 next=1800000000\n") == 0);
	buf_free(&b);

	/* Expiry. */
	h = (struct hold_state){.attempts = 1, .first = now - max_hold - 1};
	CHECK("expired_after_max_hold", hold_expired(&h, now, max_hold));
	h.first = now - max_hold;
	CHECK("not_expired_at_max_hold", !hold_expired(&h, now, max_hold));
	h.first = 1;
	CHECK("expired_far_past", hold_expired(&h, now, max_hold));
	h.first = 0;
	CHECK("unknown_first_never_expires", !hold_expired(&h, now, max_hold));
	/* The bug: (uint64_t)now - first wrapped to ~2^64 for a first 10 s in the future. */
	h.first = now + 10;
	CHECK("future_first_does_not_expire", !hold_expired(&h, now, max_hold));
	h.first = now + 365 * day;
	CHECK("far_future_first_does_not_expire", !hold_expired(&h, now, max_hold));
	h.first = INT64_MAX;
	CHECK("max_first_does_not_expire", !hold_expired(&h, now, max_hold));

	/* Retry timer. */
	h = (struct hold_state){.attempts = 1, .first = now - 100, .next = now};
	CHECK("due_at_next", hold_due(&h, now, horizon));
	h.next = now - 30 * day;
	CHECK("due_far_past", hold_due(&h, now, horizon));
	h.next = now + 100;
	CHECK("not_due_before_next", !hold_due(&h, now, horizon));
	h.next = now + horizon;
	CHECK("not_due_at_horizon", !hold_due(&h, now, horizon));
	h.next = now + 30 * day;
	CHECK("due_beyond_horizon_clock_stepped_back", hold_due(&h, now, horizon));
	h.next = INT64_MAX;
	CHECK("never_is_never", !hold_due(&h, now, horizon));
	h.next = now - 1;
	h.manual = 1;
	CHECK("manual_never_due", !hold_due(&h, now, horizon));

	/* Scheduling. */
	h = (struct hold_state){0};
	int64_t d = hold_schedule(&h, now, 60, 3600, 0);
	CHECK("schedule_first", h.attempts == 1 && h.first == now && d == 60 && h.next == now + 60);
	d = hold_schedule(&h, now + 60, 60, 3600, 0);
	CHECK("schedule_doubles", h.attempts == 2 && h.first == now && d == 120);
	h.attempts = 40;
	d = hold_schedule(&h, now, 60, 3600, 7);
	CHECK("schedule_capped_with_jitter", d == 3600 + 7 && h.next == now + d);
	d = hold_schedule(&h, now, 60, 3600, 1000000);
	CHECK("jitter_at_most_a_quarter", d >= 3600 && d <= 3600 + 900);
	h = (struct hold_state){.attempts = 1, .first = now + 7 * day, .next = now + 7 * day};
	hold_schedule(&h, now, 60, 3600, 0);
	CHECK("schedule_future_first_restarts_at_now", h.first == now && h.attempts == 2);
	CHECK("schedule_then_not_expired", !hold_expired(&h, now + 60, max_hold));
	h = (struct hold_state){.attempts = 1, .first = now - 4 * day};
	hold_schedule(&h, now, 60, 3600, 0);
	CHECK("schedule_keeps_past_first", h.first == now - 4 * day);
	return failures ? 1 : 0;
}
