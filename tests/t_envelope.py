#!/usr/bin/env python3
"""Envelope addresses (issue 14, L1): an address that could close the SMTP path or add an
ESMTP parameter ("a@b> NOTIFY=NEVER") is refused at every intake (spoolctl inject, queue
files in inbound/, addresses from the headers of plain files) and again by connector-smtp
before the dialogue; non-ASCII only in an SMTPUTF8 envelope (the U record, inject -U);
queue-file records may end in CRLF. A real SMTP sink shows what reached the wire."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

BAD = "victim@example.net> NOTIFY=NEVER"


def smtp_pipeline(sink, **kw):
    conn = dict(name="smtp", domains=["*"], type="smtp",
                relay="smtp://127.0.0.1:%d" % sink.port, helo="spoold-test",
                retry_min=1, retry_max=2)
    conn.update(kw)
    return Pipeline(scanners=[clamscan()], connectors=[conn])


def sink_wire(sink):
    return b"".join(sink.lines)


def no_restarts(p):
    st = p.status_file()
    assert st and all(s["restarts"] == 0 for s in st), st


@test
def inject_refuses_an_esmtp_parameter_in_an_address_with_exit_65():
    p = Pipeline(scanners=[clamscan()])
    p.start()
    for args in (["-f", "s@example.org", BAD],
                 ["-f", "s@example.org> RET=FULL", "r@example.net"],
                 ["-f", "s@example.org", "r@example.net", "<r2@example.net>"],
                 ["-f", "s@example.org", "r@example.net\r\nRCPT TO:<x@y>"],
                 ["-f", "s@example.org", "j\u00fcrgen@example.net"]):
        r = p.ctl("inject", *args, stdin=msgs.clean())
        assert r.returncode == 65, (args, r.returncode, r.out)
        assert "invalid" in r.out and "address" in r.out, r.out
        assert "\x1b" not in r.out and "\r" not in r.out, repr(r.out)
    assert p.entries("inbound") == [], p.entries("inbound")
    # A well-formed address still goes through, and UTF-8 with -U (SMTPUTF8).
    q1 = p.inject("s@example.org", ["r@example.net"], msgs.clean())
    r = p.ctl("inject", "-U", "-f", "s@example.org", "j\u00fcrgen@example.net",
              stdin=msgs.clean(subject="utf8"))
    assert r.returncode == 0, r.out
    finals = p.wait_final(2)
    assert sorted(f[0] for f in finals) == ["outbox/smtp", "outbox/smtp"], finals
    env = {q: p.read(path, "envelope") for _, q, path in finals}
    assert env[q1] == b"Ss@example.org\nRr@example.net\nE\n", env
    q2 = r.out.strip().splitlines()[-1]
    assert env[q2] == "U\nSs@example.org\nRj\u00fcrgen@example.net\nE\n".encode(), env


@test
def queue_file_with_a_smuggled_parameter_goes_to_badmail_and_never_to_the_wire():
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    qf = b"SPOOLD-QUEUE-FILE 1\nSs@example.org\nR" + BAD.encode() + b"\nE\n" + msgs.clean()
    p.drop("smuggle", qf)
    bare_cr = (b"SPOOLD-QUEUE-FILE 1\nSs@example.org\nRr@example.net\rRCPT TO:<x@y>\nE\n" +
               msgs.clean())
    p.drop("barecr", bare_cr)
    utf8_plain = ("SPOOLD-QUEUE-FILE 1\nSs@example.org\nRj\u00fcrgen@example.net\nE\n"
                  .encode() + msgs.clean())
    p.drop("utf8plain", utf8_plain)
    # Records with CRLF ends are fine (after the magic line, which is exact): the CR
    # before each LF is dropped.
    good = b"SPOOLD-QUEUE-FILE 1\nSs@example.org\r\nRok@example.net\r\nE\r\n" + msgs.clean()
    p.drop("crlf", good)
    wait_for(lambda: len(p.entries("badmail")) == 3 and sink.messages, timeout=60,
             what="three badmail entries and one delivery\n" + p.logtext()[-3000:])
    reasons = [p.read(os.path.join(p.spool, "badmail", q), "reason").decode()
               for q in p.entries("badmail")]
    assert all("envelope" in r and "invalid" in r for r in reasons), reasons
    assert any("non-ASCII" in r for r in reasons), reasons
    mail, rcpts, _ = sink.messages[0]
    assert mail == "<s@example.org>" and rcpts == ["<ok@example.net>"], (mail, rcpts)
    wire = sink_wire(sink)
    assert b"NOTIFY" not in wire and b"x@y" not in wire, wire
    no_restarts(p)


@test
def header_addresses_of_a_plain_file_are_checked_too():
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    # A quoted local part with a space and a '>' parses as one address in the header; as
    # an SMTP path it would end early and add a parameter. It is not a recipient.
    m = (b"From: s@example.org\nTo: \"x> NOTIFY=NEVER\"@example.net\n"
         b"Subject: quoted\nMessage-ID: <q1@example.test>\n\nbody\n")
    p.drop("quoted", m)
    wait_for(lambda: p.entries("badmail"), timeout=60,
             what="the plain file in badmail\n" + p.logtext()[-3000:])
    q = p.entries("badmail")[0]
    reason = p.read(os.path.join(p.spool, "badmail", q), "reason").decode()
    assert "recipient" in reason, reason
    assert sink.lines == [] and p.outbox() == [], (sink.lines, p.outbox())
    no_restarts(p)


@test
def connector_refuses_a_bad_address_in_an_outbox_entry_before_the_dialogue():
    """An outbox entry is the router's output; this one is written by hand, as a damaged
    or hostile entry would be. connector-smtp must not put it on the wire."""
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink)
    qid = "0000000000abcd-000001-0001"
    d = os.path.join(p.spool, "outbox", "smtp", qid)
    os.makedirs(d)
    with open(os.path.join(d, "envelope"), "wb") as f:
        f.write(b"Ss@example.org\nRok@example.net\nR" + BAD.encode() + b"\nE\n")
    with open(os.path.join(d, "message"), "wb") as f:
        f.write(msgs.clean())
    p.hand_made(os.path.dirname(d), "router")  # outbox/smtp/ too: the router makes it
    p.start()
    wait_for(lambda: p.entries("badmail"), timeout=60,
             what="the outbox entry bounced\n" + p.logtext()[-3000:])
    assert p.outbox() == [], p.outbox()
    assert sink.lines == [], sink.lines
    reason = p.read(os.path.join(p.spool, "badmail", p.entries("badmail")[0]), "reason")
    assert b"invalid recipient" in reason, reason
    no_restarts(p)


@test
def smtputf8_envelope_goes_out_with_smtputf8():
    sink = SmtpSink(smtputf8=True)
    harness.cleanup(sink.stop)
    p = smtp_pipeline(sink).start()
    rcpt = "j\u00fcrgen@example.net"
    r = p.ctl("inject", "-U", "-f", "s@example.org", rcpt, stdin=msgs.clean(subject="utf8"))
    assert r.returncode == 0, r.out
    wait_for(lambda: sink.messages, timeout=60, what="the delivery\n" + p.logtext()[-2000:])
    wire = sink_wire(sink)
    assert b"MAIL FROM:<s@example.org> SMTPUTF8\r\n" in wire, wire
    assert b"RCPT TO:<" + rcpt.encode() + b">\r\n" in wire, wire
    no_restarts(p)


if __name__ == "__main__":
    harness.main()
