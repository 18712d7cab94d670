#!/usr/bin/env python3
"""The benchmark harness (bench/run.py) still works: a smoke run with a few messages and
one scanner mode through the real binaries. Never a timing assertion: only that it runs,
that every message reached the right final place, and that it wrote its tables."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

RUN = os.path.join(harness.ROOT, "bench", "run.py")


@test(timeout=240)
def bench_smoke_writes_tables():
    d = harness.tmpdir("bench")
    out = os.path.join(d, "PERFORMANCE.md")
    r = harness.run([sys.executable, RUN, "--smoke", "--bin", harness.BIN or "",
                     "--out", out, "--work", os.path.join(d, "w")], timeout=200)
    assert r.returncode == 0, "bench/run.py --smoke exited %d:\n%s" % (r.returncode, r.out[-3000:])
    text = open(out).read()
    for head in ("* **Machine:**", "* **Disk:**", "* **Command:**", "* **Date:**",
                 "## 1. End-to-end throughput", "## 2. The floor"):
        assert head in text, "%s missing from the smoke report:\n%s" % (head, text)
    # 12 messages, one with EICAR: 11 delivered, 1 quarantined, none held, no badmail.
    row = re.search(r"^\| a \(12 msgs\) \| no-op exec, per attachment \| ([0-9.]+) \| "
                    r"([0-9.]+) \|.*\| (\d+/\d+/\d+/\d+) \|$", text, re.M)
    assert row, "no throughput row for corpus a in:\n%s" % text
    assert float(row.group(1)) > 0, row.group(0)
    assert row.group(3) == "11/1/0/0", "final places %s, want 11/1/0/0" % row.group(3)
    ratio = re.search(r"^\| a \| no-op exec, per attachment \|.*\| \*\*([0-9.]+)x\*\* \|$", text,
                      re.M)
    assert ratio and float(ratio.group(1)) > 0, "no floor ratio row in:\n%s" % text
    assert not os.path.exists(os.path.join(d, "w", "run001")), "spool left behind without --keep"


@test(timeout=60)
def bench_refuses_missing_binaries():
    d = harness.tmpdir("bench-nobin")
    r = harness.run([sys.executable, RUN, "--smoke", "--bin", d, "--out",
                     os.path.join(d, "P.md")], timeout=50)
    assert r.returncode != 0, "bench ran without binaries:\n%s" % r.out
    assert "spoold" in r.out and "not found" in r.out, r.out
    assert not os.path.exists(os.path.join(d, "P.md")), "a report was written anyway"


if __name__ == "__main__":
    harness.main()
