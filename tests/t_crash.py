#!/usr/bin/env python3
"""Deterministic crash points (docs/INTERNALS.md): a stage _exits at a named step of its
commit path; the next run recovers; the message ends in exactly one final place, byte for
byte, with no orphan work directory. Needs the test build (crash points compiled in)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

POINTS = [
    ("splitter", "split-claimed", "outbox/smtp"),
    ("splitter", "split-parts", "outbox/smtp"),
    ("splitter", "split-precommit", "outbox/smtp"),
    ("splitter", "split-body", "outbox/smtp"),
    ("splitter", "moved-to-scan", "outbox/smtp"),
    ("scanner-runner", "scan-verdicts", "outbox/smtp"),
    ("scanner-runner", "moved-to-route", "outbox/smtp"),
    ("router", "route-claimed", "outbox/smtp"),
    ("router", "route-fanout-plan", "outbox/smtp"),
    ("router", "route-fanout-one", "outbox/smtp"),
    ("router", "route-fanout-done", "outbox/smtp"),
    ("router", "route-quarantine", "quarantine"),
    ("router", "moved-to-quarantine", "quarantine"),
]


def crash_build():
    if "asan" not in (harness.BIN or ""):
        harness.skip("crash points exist only in the test build (build/asan/bin)")


def run_point(stage, point, want):
    crash_build()
    p = Pipeline(connectors=[dict(name="local", domains=["local.example"]), dict(name="smtp", domains=["*"])],
                 router=dict(default_connector="smtp"))
    m = msgs.eicar_attachment() if want == "quarantine" else msgs.clean(to=["a@x.example", "b@local.example"])
    p.drop("msg", m)
    crashed = False
    for s in ("splitter", "scanner-runner", "router"):
        if s == stage:
            r = p.stage(s, env={"SPOOLD_CRASH_AT": point})
            assert r.returncode == 99, "%s did not reach crash point %s (exit %d): %s" % (
                s, point, r.returncode, r.out[-1500:])
            crashed = True
        r = p.stage(s)
        assert r.returncode == 0, "%s recovery run exited %d: %s" % (s, r.returncode, r.out[-1500:])
    assert crashed
    finals = p.finals()
    places = sorted(f[0] for f in finals)
    if want == "quarantine":
        assert places == ["quarantine"], places
    else:
        assert places == ["outbox/local", "outbox/smtp"], places
        for f in finals:
            env = p.read(f[2], "envelope").decode()
            mine = "Rb@local.example" if f[0] == "outbox/local" else "Ra@x.example"
            assert mine in env and env.count("\nR") == 1, (f[0], env)
    for f in finals:
        assert p.read(f[2], "message") == m, "message changed in " + f[0]
    assert p.in_flight() == 0, "orphans left in flight"
    assert p.entries("trash") == [], "trash not emptied: %s" % p.entries("trash")


def make(stage, point, want):
    def fn():
        run_point(stage, point, want)
    fn.__name__ = "crash_%s_%s" % (stage.replace("-", "_"), point.replace("-", "_"))
    return fn


for _stage, _point, _want in POINTS:
    test(make(_stage, _point, _want))


# The strip commit (S4g): infected_action = "strip", an EICAR attachment. After the crash
# and the reruns, exactly one derivative is delivered (its queue ID is the one the
# original's trace names) and the original is in quarantine, byte for byte.
STRIP_POINTS = ["route-strip-prepared", "route-strip-plan", "route-strip-handoff",
                "moved-to-quarantine"]


def run_strip_point(point):
    crash_build()
    p = Pipeline(router=dict(infected_action="strip"))
    m = msgs.eicar_attachment()
    p.drop("msg", m)
    for s in ("splitter", "scanner-runner"):
        r = p.stage(s)
        assert r.returncode == 0, r.out[-1500:]
    r = p.stage("router", env={"SPOOLD_CRASH_AT": point})
    assert r.returncode == 99, "router did not reach crash point %s (exit %d): %s" % (
        point, r.returncode, r.out[-1500:])
    for _ in range(3):  # recovery, then the derivative's split, scan and route
        for s in ("splitter", "scanner-runner", "router"):
            r = p.stage(s)
            assert r.returncode == 0, "%s exited %d: %s" % (s, r.returncode, r.out[-1500:])
    q = p.entries("quarantine")
    assert len(q) == 1, p.finals()
    tr = p.read(os.path.join(p.spool, "quarantine", q[0]), "trace").decode()
    d = tr.split("strip derivative=")[1].split()[0]
    assert p.outbox() == [("smtp", d)], p.finals()
    assert p.read(os.path.join(p.spool, "quarantine", q[0]), "message") == m
    assert msgs.eicar() not in p.read(os.path.join(p.spool, "outbox", "smtp", d), "message")
    assert p.in_flight() == 0, "orphans left in flight"
    assert p.entries("trash") == [], "trash not emptied: %s" % p.entries("trash")


def make_strip(point):
    def fn():
        run_strip_point(point)
    fn.__name__ = "crash_router_strip_%s" % point.replace("-", "_")
    return fn


for _point in STRIP_POINTS:
    test(make_strip(_point))


if __name__ == "__main__":
    harness.main()
