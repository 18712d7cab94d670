#!/usr/bin/env python3
"""connector-smtp reuses its SMTP connection across messages (issue 19): the next hop
(Postfix's smtpd, smtp-sink) takes many messages per connection, and a connection per
message cost a connect, greeting, EHLO and QUIT each. Each message stays its own
MAIL/RCPT/DATA transaction; after any failure the connection is dropped and the next
message starts on a fresh one; an idle connection is closed after a bounded time. Real
binaries under spoold, real ClamAV, the tests' counting SMTP sink."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def smtp_pipeline(sink, **kw):
    conn = dict(name="smtp", domains=["*"], type="smtp",
                relay="smtp://127.0.0.1:%d" % sink.port, helo="spoold-test",
                retry_min=1, retry_max=2)
    conn.update(kw)
    return Pipeline(scanners=[clamscan()], connectors=[conn])


def commands(sink):
    return [ln.split(b" ", 1)[0].split(b":", 1)[0].strip().upper() for ln in sink.lines
            if not ln.startswith((b"Subject", b"From", b"To"))]


@test(timeout=300)
def twenty_messages_use_fewer_connections_than_messages():
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink)
    p.start()
    sent = [msgs.clean(subject="reuse %d" % i, to=["r%d@example.net" % i]) for i in range(20)]
    for i, m in enumerate(sent):
        p.drop("m%02d" % i, m)
    wait_for(lambda: len(sink.messages) == 20, timeout=180,
             what="20 deliveries (%d so far)\n%s" % (len(sink.messages), p.logtext()[-2000:]))
    wait_for(lambda: p.outbox() == [], timeout=30, what="the outbox to empty")
    assert sink.connections < 20, "%d connections for 20 messages" % sink.connections
    # Each message its own transaction, its own envelope, its own data; nothing twice.
    got = sorted((r[0], d.replace(b"\r\n", b"\n")) for _, r, d in sink.messages)
    want = sorted(("<r%d@example.net>" % i, m) for i, m in enumerate(sent))
    assert [g[0] for g in got] == [w[0] for w in want], got
    assert all(g[1] == w[1] for g, w in zip(got, want)), "message data differs"
    assert all(len(r) == 1 for _, r, _ in sink.messages), sink.messages
    # No RSET needed: each transaction followed a complete one.
    assert b"RSET" not in commands(sink), commands(sink)
    p.assert_delivered_clean([("sink", d) for _, _, d in sink.messages])


@test(timeout=300)
def a_failed_transaction_closes_the_connection_and_the_next_message_starts_fresh():
    """The 2nd DATA is answered 451: that message is deferred (and delivered on a later
    try), the connection it failed on is never used again (a new connection, a new
    EHLO), and the other messages still go through."""
    sink = SmtpSink(data_replies=["250 2.0.0 ok", "451 4.3.0 try later", "250 2.0.0 ok"])
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink)
    p.start()
    for i in range(4):
        p.drop("f%d" % i, msgs.clean(subject="fail %d" % i))
    wait_for(lambda: len(sink.messages) == 4 and p.outbox() == [], timeout=180,
             what="4 deliveries (%d so far)\n%s" % (len(sink.messages), p.logtext()[-2000:]))
    cmds = commands(sink)
    # After the 451 (the second DATA), the next command on the wire is a fresh EHLO (or
    # the QUIT that closes the failed connection, then EHLO): never a MAIL on it.
    datas = [i for i, c in enumerate(cmds) if c == b"DATA"]
    after = [c for c in cmds[datas[1] + 1:] if c != b"QUIT"]
    assert after and after[0] == b"EHLO", cmds
    assert sink.connections >= 2, sink.connections
    assert "deferred connector=smtp" in p.logtext()
    p.assert_delivered_clean([("sink", d) for _, _, d in sink.messages])


@test(timeout=300)
def an_idle_connection_is_closed_and_a_later_message_reconnects():
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink)
    p.start()
    p.drop("i0", msgs.clean(subject="before idle"))
    wait_for(lambda: len(sink.messages) == 1, timeout=120, what="the first delivery")
    # The connector closes its idle connection (QUIT) after its idle bound (5 s).
    wait_for(lambda: sink.lines and sink.lines[-1].strip().upper() == b"QUIT", timeout=30,
             what="the idle connection to be closed with QUIT: %r" % sink.lines[-3:])
    n = sink.connections
    time.sleep(0.5)
    p.drop("i1", msgs.clean(subject="after idle"))
    wait_for(lambda: len(sink.messages) == 2, timeout=120, what="the second delivery")
    assert sink.connections == n + 1, (n, sink.connections)
    p.assert_delivered_clean([("sink", d) for _, _, d in sink.messages])


if __name__ == "__main__":
    harness.main()
