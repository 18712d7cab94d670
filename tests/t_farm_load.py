#!/usr/bin/env python3
"""Scan-farm load tests (issue 17), short: the scenarios of bench/farm.py (`make
bench-farm` runs them with 5,000 messages and reports the timings) with a few hundred
messages each, asserting the same properties with generous but real bounds:

  split  three clamd, least-busy: the work splits within +-25 % (the bench: +-15 %);
  kill   one clamd killed mid-run: no message lost, none delivered unscanned, the others
         take over (first part scanned elsewhere, and the longest gap after the kill,
         both under 10 s; the goal is 2 s, reported exactly by the bench); restarted, it
         is probed and takes mail again;
  slow   one clamd behind a proxy adding 50 ms per reply: least-busy gives it less than
         a quarter of a healthy one's share (no throughput assertion here);
  cache  corpus a of bench/run.py twice: the cache answers more than 95 % of the parts
         of the second pass, and the verdicts are the same.

No timing is asserted except the takeover, with a margin five times the goal. Real clamd
instances, real binaries; each scenario checks the delivery invariant itself (every
outbox message rescanned whole with clamscan and re-split), so a failure there fails
the test.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

sys.path.insert(0, os.path.join(harness.ROOT, "bench"))
import farm  # noqa: E402  (bench/farm.py: the load scenarios)


@test(timeout=120)
def farm_load_least_busy_splits_within_25_percent():
    r = farm.run_split(300)
    for key in ("placed", "parts"):
        assert sum(r[key]) > 0 and farm.spread(r[key]) <= 25.0, (key, r)
    assert sum(r["placed"]) == 300, r
    assert r["places"] == ["outbox/smtp"], r


@test(timeout=180)
def farm_load_kill_one_clamd_no_loss_none_unscanned_takeover_and_rejoin():
    r = farm.run_kill(300, after=60)
    assert r["finals"] == r["total"] and r["held"] == 0, ("messages lost or held", r)
    assert r["quarantined"] == 1 and r["delivered"] == r["expected_delivered"], r
    assert not r["unscanned"], ("delivered without a clean verdict per part", r["unscanned"])
    assert r["killed_errors"] >= 1 and r["killed_state"] in ("down", "probe-due"), r
    # The goal is 2 s (bench/farm.py reports it exactly); a loaded box gets 10.
    assert r["first_elsewhere"] is not None and r["first_elsewhere"] < 10.0, r
    assert r["max_gap"] is not None and r["max_gap"] < 10.0, r
    assert r["dead_after"] == 0, ("verdicts from the dead clamd after the kill", r)
    assert r["rejoin"] is not None and r["load"][1] > 0, \
        ("the restarted clamd never took mail again", r)


@test(timeout=180)
def farm_load_slow_clamd_gets_far_less_work():
    r = farm.run_slow(200, rounds=1)
    for case in ("two", "three"):
        assert sum(r[case]["placed"]) == 200 and r[case]["places"] == ["outbox/smtp"], r
    slow, fast = r["three"]["placed"][0], r["three"]["placed"][1:]
    # By requests in flight alone it got about half a healthy one's share (the idlest
    # runner slot always went to it); weighed by its time per part, far less.
    assert slow * 4 < sum(fast) / 2.0, ("least-busy did not spare the slow clamd", r)


@test(timeout=150)
def farm_load_cache_answers_the_second_pass():
    r = farm.run_cache(200)
    assert r["pass1"]["misses"] > 0, r
    assert r["ratio"] > 0.95, r
    assert r["pass1"]["quarantined"] == r["pass2"]["quarantined"] == r["infected"] > 0, r


if __name__ == "__main__":
    harness.main()
