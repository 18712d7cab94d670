#!/usr/bin/env python3
"""The bundled delivery agents (issue 9): connector-smtp and connector-maildir, under spoold."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def smtp_pipeline(sink, **kw):
    conn = dict(name="smtp", domains=["*"], type="smtp", relay="smtp://127.0.0.1:%d" % sink.port,
                helo="spoold-test", retry_min=1, retry_max=2)
    conn.update(kw)
    return Pipeline(scanners=[clamscan()], connectors=[conn])


@test
def smtp_delivers_with_envelope_and_removes_only_after_acceptance():
    sink = SmtpSink(data_replies=["451 4.3.0 try later", "250 2.0.0 queued"])
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    m = msgs.clean(subject="dot stuffing", body="Hello,\n.a line that starts with a dot\n..two\n")
    qid = p.inject("from@example.org", ["a@example.net", "b@example.net"], m)
    wait_for(lambda: sink.messages, timeout=60, what="delivery after the 451\n" + p.logtext()[-2000:])
    mail, rcpts, data = sink.messages[0]
    assert mail == "<from@example.org>" and rcpts == ["<a@example.net>", "<b@example.net>"], (mail, rcpts)
    assert data.replace(b"\r\n", b"\n") == m, data[:300]
    assert sink.attempts == 2, "want one deferral then one delivery, got %d attempts" % sink.attempts
    wait_for(lambda: p.outbox() == [], timeout=20, what="outbox entry removed")
    log = p.logtext()
    assert "deferred connector=smtp" in log and "delivered connector=smtp" in log, log[-2000:]
    st = {s["name"] for s in p.status_file()}
    assert "connectors" in st, st
    assert qid


@test
def smtp_5xx_becomes_a_bounce_record():
    sink = SmtpSink(data_replies=["554 5.7.1 rejected"])
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    p.drop("m", msgs.clean())
    wait_for(lambda: p.entries("badmail"), timeout=60, what="a bounce record in badmail/")
    q = p.entries("badmail")[0]
    reason = p.read(os.path.join(p.spool, "badmail", q), "reason").decode()
    assert "connector smtp" in reason and "554" in reason, reason
    assert p.outbox() == [] and sink.messages == []


@test
def smtp_unreachable_keeps_the_entry_with_backoff():
    sink = SmtpSink()
    port = sink.port
    sink.stop()  # nothing listens there now
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % port, retry_min=1, retry_max=2)]).start()
    p.drop("m", msgs.clean())
    wait_for(lambda: p.outbox() and os.path.exists(
        os.path.join(p.spool, "outbox", "smtp", p.outbox()[0][1], "deliver")), timeout=60,
        what="a deferred outbox entry")
    wait_for(lambda: "attempts=2" in open(os.path.join(
        p.spool, "outbox", "smtp", p.outbox()[0][1], "deliver")).read(), timeout=30,
        what="a second attempt after the back-off")
    assert not p.entries("badmail")


@test
def maildir_delivers_once_even_after_an_interrupted_delivery():
    md = os.path.join(harness.tmpdir("md"), "Maildir")
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="local", domains=["*"], type="maildir", maildir=md)]).start()
    m = msgs.clean()
    p.drop("m", m)
    wait_for(lambda: os.path.isdir(os.path.join(md, "new")) and os.listdir(os.path.join(md, "new")),
             timeout=60, what="the message in the Maildir")
    wait_for(lambda: p.outbox() == [], timeout=20, what="the outbox entry removed")
    names = os.listdir(os.path.join(md, "new"))
    assert len(names) == 1, names
    data = open(os.path.join(md, "new", names[0]), "rb").read()
    assert data.startswith(b"Return-Path: <sender@example.com>\n") and data.endswith(m), data[:200]
    # An interrupted delivery: the message is in the Maildir (already read: in cur/) but
    # the outbox entry is still there. The connector must not deliver it twice.
    p.stop()
    os.rename(os.path.join(md, "new", names[0]), os.path.join(md, "cur", names[0] + ":2,S"))
    qid = names[0].split(".S")[1].split("_")[0]
    ent = os.path.join(p.spool, "outbox", "local", qid)
    os.makedirs(ent)
    for f in ("message", "envelope"):
        with open(os.path.join(ent, f), "wb") as out:
            out.write(m if f == "message" else b"Ssender@example.com\nRr@example.org\nE\n")
    p.hand_made(ent, "router")
    r = p.stage("connector-maildir", args=["-n", "local"])
    assert r.returncode == 0, r.out
    assert os.listdir(os.path.join(md, "new")) == [] and len(os.listdir(os.path.join(md, "cur"))) == 1
    assert p.outbox() == [], p.outbox()


@test
def killed_connector_is_restarted_by_spoold():
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    wait_for(lambda: p.stage_pids().get(("connectors", 0), 0) > 0, timeout=20, what="connector up")
    pid = p.stage_pids()[("connectors", 0)]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: p.stage_pids().get(("connectors", 0), 0) not in (0, pid), timeout=10,
             what="the connector restarted")
    p.drop("m", msgs.clean())
    wait_for(lambda: sink.messages, timeout=60, what="delivery by the restarted connector")


if __name__ == "__main__":
    harness.main()
