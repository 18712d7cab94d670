#!/usr/bin/env python3
"""`make bench-mta` (bench/mta.py) still works: a smoke run of 20 messages (one EICAR)
through a throwaway Postfix, smtp-source in, smtp-sink out, with spoold as the LMTP and as
the pipe filter, one real clamd. Never a timing assertion: only that every clean message
reached the sink once, EICAR was quarantined, the CPU figures are measured, amavisd-new is
either measured or said to be missing, and the connector reused its connection into
Postfix's re-injection service. Skipped without root or Postfix."""
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib.postfix import need_postfix  # noqa: E402

MTA = os.path.join(harness.ROOT, "bench", "mta.py")


@test(timeout=400)
def bench_mta_smoke_through_postfix():
    need_postfix()
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            harness.skip("%s not installed (Debian package postfix)" % tool)
    d = harness.tmpdir("speed-mta")
    for path in (os.path.dirname(d), d):  # as t_postfix.py: Postfix's users reach it
        os.chmod(path, 0o755)
    out = os.path.join(d, "P.md")
    with open(out, "w") as f:
        f.write("# title\n\n<!-- analysis: kept by bench/run.py across runs -->\n\nanalysis\n")
    r = harness.run([sys.executable, MTA, "--smoke", "--runs", "1", "--bin", harness.BIN or "",
                     "--out", out, "--work", os.path.join(d, "w")], timeout=380)
    assert r.returncode == 0, "bench/mta.py --smoke exited %d:\n%s" % (r.returncode, r.out[-3000:])
    text = open(out).read()
    assert text.index("## Behind Postfix") > text.index("<!-- analysis"), text
    assert text.rstrip().endswith("analysis"), "the section must go right below the mark"
    rows = {}
    for ln in text.splitlines():
        m = re.match(r"^\| a \(20 msgs\) \| (spoold via \w+) .*\| (\d+/\d+/\d+) \|$", ln)
        if m:
            rows[m.group(1)] = ln
            assert m.group(2) == "19/1/0", "arrived/quarantined/duplicates %s: %s" % (
                m.group(2), ln)
            cells = [c.strip() for c in ln.strip("|").split("|")]
            assert float(cells[2]) > 0 and float(cells[6]) >= 0 and float(cells[7]) > 0, ln
    assert set(rows) == {"spoold via LMTP", "spoold via pipe"}, rows
    conns = re.findall(r"^\| a \| (lmtp|pipe) \| .* \| ([0-9.]+) \|$", text, re.M)
    assert len(conns) == 2, text
    for mode, n in conns:
        assert float(n) < 19, "%s: %s re-injection connections for 19 messages" % (mode, n)
    installed = harness.run(["dpkg", "-s", "amavisd-new"], timeout=30).returncode == 0
    if not installed:
        assert "amavisd-new is not installed" in text, text


if __name__ == "__main__":
    harness.main()
