#!/usr/bin/env python3
"""Disk full (issue 7): the spool on a small tmpfs that the test fills up. Intake stops
and says so once, nothing is lost or half-written, and mail flows again once space is
back. Needs root (mount); skipped otherwise."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402



def fill(path, leave):
    """Fill the filesystem of path until about `leave` bytes are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "wb") as f:
        chunk = b"\0" * (1 << 20)
        todo = max(0, free - leave)
        while todo > 0:
            n = min(todo, len(chunk))
            try:
                f.write(chunk[:n])
                f.flush()
            except OSError:
                break
            todo -= n


@test(timeout=300)
def disk_full_stops_intake_and_resumes():
    small = harness.mount_tmpfs("24m")
    p = Pipeline(scanners=[clamscan()])
    p.spool = os.path.join(small, "spool")
    with open(p.conf) as f:
        text = f.read()
    text = text.replace('spool_dir = "%s"' % os.path.join(p.dir, "spool"), 'spool_dir = "%s"' % p.spool)
    with open(p.conf, "w") as f:
        f.write(text)
    p.start()
    # one message through first: the pipeline works on this filesystem
    p.drop("first", msgs.clean(subject="first"))
    p.wait_final(1)
    # prepare messages on the same filesystem, then fill it
    prep = os.path.join(small, "prep")
    os.mkdir(prep)
    sent = []
    for i in range(20):
        m = msgs.with_attachment(os.urandom(60000), "a%d.bin" % i, subject="m%d" % i)
        with open(os.path.join(prep, "m%d" % i), "wb") as f:
            f.write(m)
        sent.append(m)
    fill(small, 200 * 1024)
    for i in range(20):
        os.rename(os.path.join(prep, "m%d" % i), os.path.join(p.spool, "inbound", "m%d" % i))
    time.sleep(4)
    log = p.logtext()
    full = [l for l in log.splitlines() if "is full" in l or "claiming nothing" in l]
    assert full, "the full disk was not logged:\n" + log[-3000:]
    for prog in ("splitter", "scanner-runner", "router"):
        n = len([l for l in full if l.startswith(prog + "[")])
        assert n <= 1, "%s logged the full disk %d times:\n%s" % (prog, n, "\n".join(full))
    # nothing half-written looks complete: every entry past incoming/ has its manifest
    for state in ("scan", "route"):
        for q in p.entries(state):
            assert os.path.exists(os.path.join(p.spool, state, q, "manifest")), (state, q)
    assert len(p.finals()) == 1, "nothing new may have moved on: %s" % p.finals()
    st = p.status_file()
    assert all(s["state"] == "running" for s in st), st
    # space comes back: everything flows, nothing lost or duplicated
    os.unlink(os.path.join(small, "filler"))
    p.wait_final(21, timeout=120)
    p.check_invariant(sent)
    assert all(f[0] == "outbox/smtp" for f in p.finals()), p.finals()
    assert "has space again" in p.logtext()
    p.stop()


if __name__ == "__main__":
    harness.main()
