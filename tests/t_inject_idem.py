#!/usr/bin/env python3
"""spoolctl inject -q ID (issue 20): when Postfix's pipe(8) retries a delivery whose
inject was killed after it had queued the message, the retry must not queue it twice;
when it was killed before, the retry queues it once. The kills are crash points of the
test build (SPOOLD_CRASH_AT), right after the commit rename and right before it."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def _inject(p, data, qid="4Xy7Zq1aBc", rcpts=("bob@example.com",), crash=None):
    env = dict(os.environ)
    if crash:
        env["SPOOLD_CRASH_AT"] = crash
    return subprocess.run([harness.bin_path("spoolctl"), "-c", p.conf, "inject", "-q", qid,
                           "-f", "alice@example.org", "--"] + list(rcpts),
                          input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=60)


def _crash_build():
    if "asan" not in harness.BIN:
        harness.skip("crash points exist only in the test build (build/asan/bin)")


@test
def same_queue_id_twice_queues_once():
    p = Pipeline(scanners=[clamscan()]).start()
    data = msgs.clean(subject="once")
    a, b = _inject(p, data), _inject(p, data)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout, (a.stdout, b.stdout)
    # Another recipient batch of the same Postfix queue file is another message.
    c = _inject(p, data, rcpts=("carol@example.com",))
    assert c.returncode == 0 and c.stdout != a.stdout, c.stdout
    finals = p.wait_final(2)
    assert len(finals) == 2, finals
    p.check_invariant([])  # nothing in flight
    assert sorted(f[0] for f in finals) == ["outbox/smtp", "outbox/smtp"], finals


@test
def retry_after_a_kill_past_the_commit_queues_nothing_more():
    _crash_build()
    p = Pipeline(scanners=[clamscan()]).start()
    data = msgs.clean(subject="killed after commit")
    a = _inject(p, data, crash="inject-committed")
    assert a.returncode == 99, (a.returncode, a.stderr)  # pipe(8) sees a failure: retries
    b = _inject(p, data)
    assert b.returncode == 0, b.stderr
    finals = p.wait_final(1)
    assert len(finals) == 1 and finals[0][1] == b.stdout.decode().strip(), (finals, b.stdout)


@test
def retry_after_a_kill_before_the_commit_queues_once():
    _crash_build()
    p = Pipeline(scanners=[clamscan()]).start()
    data = msgs.clean(subject="killed before commit")
    a = _inject(p, data, crash="inject-complete")
    assert a.returncode == 99, (a.returncode, a.stderr)
    assert p.entries("inbound") == [] and p.finals() == [], "nothing queued yet"
    b = _inject(p, data)
    assert b.returncode == 0, b.stderr
    finals = p.wait_final(1)
    assert len(finals) == 1, finals
    got = p.read(finals[0][2], "message")
    assert got == data, got[:200]


@test
def plain_inject_is_unchanged():
    p = Pipeline(scanners=[clamscan()]).start()
    data = msgs.clean(subject="plain")
    for _ in range(2):
        r = subprocess.run([harness.bin_path("spoolctl"), "-c", p.conf, "inject", "-f",
                            "alice@example.org", "bob@example.com"], input=data,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, r.stderr
    assert len(p.wait_final(2)) == 2


@test
def bad_queue_id_is_a_usage_error():
    p = Pipeline(scanners=[clamscan()])
    r = _inject(p, msgs.clean(), qid="../x")
    assert r.returncode == 64, (r.returncode, r.stderr)


if __name__ == "__main__":
    harness.main()
