#!/usr/bin/env python3
"""Process control of scanner children (issue 4): no shell, own process group, scrubbed
environment, stdin from /dev/null, rlimits, and no inherited descriptor (not the slot)."""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402


@test
def scanner_child_runs_in_a_clean_box():
    rep = os.path.join(harness.tmpdir("inspect"), "report")
    p = Pipeline(scanners=[fake("inspect", args=[rep], canary=False, rlimit_as=1 << 31,
                                rlimit_cpu=30, rlimit_nofile=64)])
    os.environ["SPOOLD_SECRET_TEST_VAR"] = "must-not-leak"
    try:
        p.start()
    finally:
        del os.environ["SPOOLD_SECRET_TEST_VAR"]
    p.drop("m; rm -rf x $(id)", msgs.clean())
    p.wait_final(1)
    runs = [json.loads(l) for l in open(rep)]
    assert runs, "the scanner never ran"
    for r in runs:
        assert set(r["env"]) <= {"PATH", "LANG", "LC_ALL"}, r["env"]
        assert r["pgid"] == r["pid"], "not in its own process group: %s" % r
        assert r["rlimit_as"] == 1 << 31 and r["rlimit_cpu"] == 30 and r["rlimit_nofile"] == 64, r
        assert r["rlimit_core"] == 0, r
        assert r["fds"]["0"] == "/dev/null", r["fds"]
        extra = {fd: t for fd, t in r["fds"].items() if fd not in ("0", "1", "2")}
        # python's own listdir fd; nothing else, not even the slot lock (issue 14 L10: a
        # grandchild that inherited it could keep the slot forever)
        extra = {fd: t for fd, t in extra.items() if not t.startswith("/proc/")}
        assert not extra, "unexpected descriptors: %s" % extra
        if p.separated:
            # The runner scans private copies it hashed, in a directory of its own.
            assert re.search(r"/spoold-runner\.[^/]+/[0-9a-f]{14}-", r["cwd"]), r["cwd"]
        else:
            assert r["cwd"].startswith(os.path.join(p.spool, "scan")), r["cwd"]
        for f in r["files"]:
            assert os.path.basename(f).endswith(".ATT"), "a part path that is not an index: %s" % f


if __name__ == "__main__":
    harness.main()
