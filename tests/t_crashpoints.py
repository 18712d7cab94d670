#!/usr/bin/env python3
"""The crash-test safety net follows docs/INTERNALS.md (issue 18): the crash points named
in the state table (and the inject record's), the CRASH_POINT names compiled into the C
sources, and the points some test crashes are one set; a commit step added and forgotten
fails here. Also the crash tests for the points tests/t_crash.py did not cover: the
splitter's badmail commit, the router's hold and discard."""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402


def _read(*p):
    with open(os.path.join(harness.ROOT, *p), encoding="utf-8") as f:
        return f.read()


def table_points():
    """Backticked names in the crash points column of the state table, and the crash
    points the INTERNALS text names elsewhere (the inject record)."""
    text = _read("docs", "INTERNALS.md")
    pts = set()
    for line in text.splitlines():
        cells = line.split(" | ")
        if line.startswith("| S") and len(cells) >= 6:
            pts |= set(re.findall(r"`([a-z]+(?:-[a-z]+)+)`", cells[4]))
    pts |= set(re.findall(r"crash point `([a-z]+(?:-[a-z]+)+)`", text))
    return pts


def source_points():
    """CRASH_POINT("x") in the C sources, plus moved-to-<dir> for every spool directory
    (spool_entry_rename names those at run time)."""
    pts = set()
    for path in glob.glob(os.path.join(harness.ROOT, "*", "*.c")):
        with open(path, encoding="utf-8", errors="replace") as f:
            pts |= set(re.findall(r'CRASH_POINT\("([a-z-]+)"\)', f.read()))
    spool_c = _read("lib", "spool.c")
    names = re.search(r"spool_dir_names\[[^\]]*\][^{]*\{(.*?)\};", spool_c, re.S).group(1)
    dirs = set(re.findall(r'"([a-z]+)"', names))
    return pts, {"moved-to-" + d for d in dirs}


def crashed_points():
    """Every point name that a test file passes as SPOOLD_CRASH_AT: the string literals
    of the tests that are point names."""
    found = set()
    for path in glob.glob(os.path.join(harness.TESTS, "t_*.py")):
        with open(path, encoding="utf-8") as f:
            found |= set(re.findall(r'"([a-z]+(?:-[a-z]+)+)"', f.read()))
    return found


@test
def table_sources_and_tests_name_the_same_crash_points():
    table = table_points()
    literal, moved = source_points()
    assert len(table) >= 15 and len(literal) >= 15, (table, literal)
    # Every point in the code is in the table...
    missing_doc = sorted(literal - table)
    assert not missing_doc, "crash points in the C sources but not in docs/INTERNALS.md: %s" % missing_doc
    # ...every point in the table exists in the code...
    missing_code = sorted(table - literal - moved)
    assert not missing_code, "crash points in docs/INTERNALS.md that no code has: %s" % missing_code
    # ...and some test crashes every one of them.
    crashed = crashed_points()
    never = sorted(p for p in table if p not in crashed)
    assert not never, "crash points no test crashes: %s" % never


# ---- the points t_crash.py's scenarios do not reach ------------------------------------

def _crash_build():
    if "asan" not in (harness.BIN or ""):
        harness.skip("crash points exist only in the test build (build/asan/bin)")


def _crash_and_recover(p, stage, point, reruns=2):
    order = ("splitter", "scanner-runner", "router")
    crashed = False
    for _ in range(reruns):
        for s in order:
            if s == stage and not crashed:
                r = p.stage(s, env={"SPOOLD_CRASH_AT": point})
                assert r.returncode == 99, "%s did not reach %s (exit %d): %s" % (
                    s, point, r.returncode, r.out[-1500:])
                crashed = True
            r = p.stage(s)
            assert r.returncode == 0, "%s exited %d: %s" % (s, r.returncode, r.out[-1500:])
    assert crashed
    assert p.in_flight() == 0, "left in flight: %s" % p.finals()


@test
def crash_splitter_split_badmail():
    _crash_build()
    p = Pipeline()
    p.drop("empty", b"")
    _crash_and_recover(p, "splitter", "split-badmail")
    finals = p.finals()
    assert [f[0] for f in finals] == ["badmail"], finals


def _held(point):
    _crash_build()
    # A scanner that always errs: the message is held (its canary fails too: degraded).
    p = Pipeline(scanners=[fake("exit7", name="av")])
    m = msgs.clean(subject="to be held")
    p.drop("msg", m)
    _crash_and_recover(p, "router", point)
    finals = p.finals()
    assert [f[0] for f in finals] == ["hold"], finals
    assert p.read(finals[0][2], "message") == m
    assert os.path.exists(os.path.join(finals[0][2], "hold")), os.listdir(finals[0][2])


@test
def crash_router_route_hold():
    _held("route-hold")


@test
def crash_router_moved_to_hold():
    _held("moved-to-hold")


@test
def crash_router_route_discard():
    _crash_build()
    p = Pipeline(router=dict(infected_action="discard"), invariant="nothing is delivered")
    p.drop("msg", msgs.eicar_attachment())
    _crash_and_recover(p, "router", "route-discard")
    # Discarded: in no final place, nothing delivered, nothing left over.
    assert p.finals() == [] and p.outbox() == [], p.finals()


if __name__ == "__main__":
    harness.main()
