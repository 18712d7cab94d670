#!/usr/bin/env python3
"""Re-injection over a Unix socket (issue 14, M7): connector-smtp with unix_socket set
delivers through that socket (libcurl CURLOPT_UNIX_SOCKET_PATH), and a missing socket
defers, never falls back to TCP. The Postfix side, configured from docs/postfix.md, is
tests/t_postfix.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


@test
def connector_delivers_over_a_unix_socket():
    d = harness.tmpdir("sock")
    os.chmod(d, 0o700)
    path = os.path.join(d, "smtp")
    sink = SmtpSink(unix_path=path)
    harness.cleanup(sink.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://localhost", unix_socket=path,
                                  helo="spoold-test", retry_min=1, retry_max=2)])
    # A directory only the connector's user may enter (as Postfix's public/ is only
    # postdrop's).
    os.chown(d, p.stage_uid("connector-smtp"), -1)
    p.start()
    m = msgs.clean(subject="over the socket")
    qid = p.inject("from@example.org", ["a@example.net"], m)
    wait_for(lambda: sink.messages, timeout=60,
             what="delivery over the Unix socket\n" + p.logtext()[-2000:])
    mail, rcpts, data = sink.messages[0]
    assert mail == "<from@example.org>" and rcpts == ["<a@example.net>"], (mail, rcpts)
    assert data.replace(b"\r\n", b"\n") == m, data[:300]
    wait_for(lambda: p.outbox() == [], timeout=20, what="outbox entry removed")
    assert "via " + path in p.logtext(), p.logtext()[-2000:]
    assert qid


@test
def a_missing_socket_defers_and_never_falls_back_to_tcp():
    d = harness.tmpdir("sock")
    path = os.path.join(d, "absent")
    # A TCP sink on the relay URL's port: it must see nothing.
    tcp = SmtpSink()
    harness.cleanup(tcp.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % tcp.port, unix_socket=path,
                                  retry_min=1, retry_max=2)]).start()
    p.drop("m", msgs.clean())
    wait_for(lambda: p.outbox() and os.path.exists(
        os.path.join(p.spool, "outbox", "smtp", p.outbox()[0][1], "deliver")), timeout=60,
        what="a deferred outbox entry\n" + p.logtext()[-2000:])
    assert tcp.lines == [] and not p.entries("badmail"), (tcp.lines, p.entries("badmail"))


if __name__ == "__main__":
    harness.main()
