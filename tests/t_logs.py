#!/usr/bin/env python3
"""Logs (issue 6): one line per event with the queue ID and key=value fields, on stderr
or, selected in the config, on syslog (facility mail)."""
import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


@test
def stderr_lines_carry_the_queue_id():
    p = Pipeline(scanners=[clamscan()])
    p.stage("splitter")  # creates the spool
    qid = p.inject("a@example.org", ["b@example.org"], msgs.eicar_attachment())
    outs = [r.out for r in p.pass_all()]
    lines = [l for o in outs for l in o.splitlines() if qid in l]
    assert lines, outs
    for l in lines:
        assert re.match(r"^(splitter|scanner-runner|router)\[\d+\]: \w+: qid=%s " % qid, l), l
    assert any("virus=Spoold.Test.EICAR" in l for l in lines), lines


@test
def syslog_target_sends_to_dev_log_with_facility_mail():
    if os.path.exists("/dev/log"):
        harness.skip("a syslog daemon owns /dev/log here; not intercepted")
    if os.geteuid() != 0:
        harness.skip("needs root to bind /dev/log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    harness.cleanup(lambda: (sock.close(), os.unlink("/dev/log")))
    sock.settimeout(0.2)
    p = Pipeline(scanners=[clamscan()])
    with open(p.conf) as f:
        text = f.read().replace('log = { level = "debug"; };', 'log = { target = "syslog"; level = "info"; };')
    with open(p.conf, "w") as f:
        f.write(text)
    p.stage("splitter")  # creates the spool
    qid = p.inject("a@example.org", ["b@example.org"], msgs.clean())
    r = p.stage("splitter")
    assert r.returncode == 0 and qid not in r.out, "logged to stderr instead: " + r.out
    got = []
    try:
        while True:
            got.append(sock.recv(8192).decode(errors="replace"))
    except socket.timeout:
        pass
    mine = [g for g in got if qid in g]
    assert mine, "no syslog line with the queue ID: %s" % got
    # <PRI> = facility mail (2) * 8 + severity info (6) = 22
    assert all(g.startswith("<22>") for g in mine), mine
    assert any("splitter" in g for g in mine), mine


if __name__ == "__main__":
    harness.main()
