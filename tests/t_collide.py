#!/usr/bin/env python3
"""Queue ID collisions (issue 14, L3). Files dropped into inbound/ under names that are
queue IDs already in scan/, route/, quarantine/ and outbox/, and directories made in
advance at the next commit target of a message (route/, quarantine/, outbox/<conn>/):
no stage dies, and every message ends in exactly one place (a colliding commit moves the
entry on under a fresh queue ID, docs/INTERNALS.md "Queue ID collisions")."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

# Queue-ID-shaped names far in the future: no process makes them for a long time, so only
# the drops below use them.
FUTURE_F = "0fffffffffff01-000001-0001"
FUTURE_G = "0fffffffffff02-000001-0002"
FUTURE_H = "0fffffffffff03-000001-0003"


def other_entry(p, where, qid):
    """A directory that is some other message's, made where a commit will go."""
    d = os.path.join(p.spool, where, qid)
    os.makedirs(d)
    with open(os.path.join(d, "marker"), "wb") as f:
        f.write(b"someone else's entry\n")
    # Made by the stage that commits there (separated pass): one it may write. An entry
    # it may not write is set aside instead (t_privsep_stages).
    p.hand_made(d, {"route": "scanner-runner"}.get(where, "router"))
    return d


OUT = []


def one_pass(p, *stages):
    for s in stages:
        r = p.stage(s)
        OUT.append(r.out)
        assert r.returncode == 0, "%s --once exited %d:\n%s" % (s, r.returncode, r.out[-3000:])


@test
def queue_id_shaped_names_and_taken_commit_targets_never_stop_a_stage():
    p = Pipeline(scanners=[clamscan()])
    expected = []

    def msg(subject):
        m = msgs.clean(subject=subject)
        expected.append(m)
        return m

    one_pass(p, "splitter")  # makes the spool
    # Real entries in outbox/ and quarantine/ ...
    q_out = p.inject("s@example.org", ["r@example.net"], msg("to the outbox"))
    eicar = msgs.eicar_attachment(subject="to quarantine")
    expected.append(eicar)
    q_q = p.inject("s@example.org", ["r@example.net"], eicar)
    one_pass(p, "splitter", "scanner-runner", "router")
    assert ("smtp", q_out) in p.outbox() and p.entries("quarantine") == [q_q], p.finals()
    # ... one in route/ and one in scan/.
    q_route = p.inject("s@example.org", ["r@example.net"], msg("in route"))
    one_pass(p, "splitter", "scanner-runner")
    q_scan = p.inject("s@example.org", ["r@example.net"], msg("in scan"))
    one_pass(p, "splitter")
    assert p.entries("route") == [q_route] and p.entries("scan") == [q_scan], p.finals()

    # Drops named exactly like those queue IDs, and like IDs not in use yet.
    for q in (q_scan, q_route, q_q, q_out):
        p.drop(q, msg("dropped as " + q))
    p.drop(FUTURE_F, msg("future F"))
    g = msgs.eicar_attachment(subject="future G")
    expected.append(g)
    p.drop(FUTURE_G, g)
    p.drop(FUTURE_H, msg("future H"))
    one_pass(p, "splitter")
    assert p.entries("inbound") == [], p.entries("inbound")
    assert FUTURE_F in p.entries("scan") and FUTURE_G in p.entries("scan"), p.entries("scan")

    # Then the next commit targets are taken: route/F (the runner's), quarantine/G and
    # outbox/smtp/<q_scan> (the router's), hold/<H> would be the router's too if held.
    other_entry(p, "route", FUTURE_F)
    other_entry(p, "quarantine", FUTURE_G)
    other_entry(p, os.path.join("outbox", "smtp"), q_scan)
    one_pass(p, "scanner-runner", "router")
    # The marker in route/F is no message: the router holds it; nothing else is in flight.
    one_pass(p, "splitter", "scanner-runner", "router")
    p.check_invariant(expected)
    # Each pre-made entry is untouched, under its own name.
    for d in (os.path.join("hold", FUTURE_F), os.path.join("quarantine", FUTURE_G),
              os.path.join("outbox", "smtp", q_scan)):
        assert os.path.exists(os.path.join(p.spool, d, "marker")), d
    log = "".join(OUT)
    # Separated, the splitter cannot look into outbox/ (the connectors' group): the drop
    # named like the outbox entry's ID keeps that ID, and the router's commit meets it.
    want = 4 if p.separated else 3
    assert log.count("queue ID collision") == want, \
        [l for l in log.splitlines() if "collision" in l]
    # 2 outbox + 2 quarantine + 6 outbox from drops/injects, each counted once.
    places = sorted(f[0] for f in p.finals() if os.path.exists(os.path.join(f[2], "message")))
    assert places.count("quarantine") == 2 and places.count("outbox/smtp") == len(expected) - 2, \
        places


if __name__ == "__main__":
    harness.main()
