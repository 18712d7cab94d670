#!/usr/bin/env python3
"""The raw part in clamd mode (issue 19, cause 3): scanned after every decoded part of its
message, so that clamd's clean cache answers for the attachments its own MIME parser
re-extracts; still scanned in full for every message that is delivered; not sent when a
decoded part is already infected, and then recorded as not scanned, never as clean.

Real clamd with the test signatures, real binaries. A recorder sits on the unix socket
the scanner-runner is given and forwards every byte and every descriptor to the real
clamd unchanged; it only notes, per connection, the size of each file handed over with
zFILDES and each reply clamd sent back, in the order it passed them on. The runner can
only send a request after it read the replies it waits for, so the order the recorder
saw is the order the runner asked in.

  raw_part_is_scanned_after_the_decoded_parts   the order, and a clean delivery
  virus_only_in_the_raw_form_is_quarantined     EICAR in a header: no decoded part holds
                                                it, the raw scan finds it; its report
                                                names no part as not scanned
  raw_part_skipped_when_a_decoded_part_is_infected   not sent; an error line says why,
                                                and the quarantine report and report.json
                                                name the raw part as not scanned
  stripped_message_is_scanned_raw_again         infected_action = "strip": the derivative
                                                that is delivered has its raw scan
"""
import json
import os
import re
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

EICAR_NAME = "Spoold.Test.EICAR.NDB.UNOFFICIAL"


class FildesRecorder:
    """A unix socket at path whose every connection is forwarded to the clamd at
    upstream, bytes and SCM_RIGHTS descriptors unchanged. .conns: one list of events per
    connection, ("fildes", size of the file) and ("reply", text), appended before the
    item is passed on."""

    def __init__(self, path, upstream):
        self.path, self.upstream = path, upstream
        self.conns = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)  # the separated pass: the runner is another user
        self.sock.listen(16)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        ev = []
        self.conns.append(ev)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            u.connect(self.upstream)
        except OSError:
            c.close()
            return
        down = threading.Thread(target=self._down, args=(u, c, ev), daemon=True)
        down.start()
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(c, 65536, 8)
                if not data and not fds:
                    break
                if fds:
                    for fd in fds:
                        ev.append(("fildes", os.fstat(fd).st_size))
                    # The descriptor rides on the last byte read (a unix stream read
                    # ends after the segment that carried it), as clamd wants it: on a
                    # byte after the command, never on the command itself.
                    if len(data) > 1:
                        u.sendall(data[:-1])
                    socket.send_fds(u, [data[-1:]], fds)
                    for fd in fds:
                        os.close(fd)
                else:
                    u.sendall(data)
        except OSError:
            pass
        try:
            u.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        down.join(60)
        u.close()
        c.close()

    @staticmethod
    def _down(u, c, ev):
        buf = b""
        try:
            while True:
                data = u.recv(65536)
                if not data:
                    break
                buf += data
                while b"\0" in buf:
                    line, buf = buf.split(b"\0", 1)
                    ev.append(("reply", line.decode(errors="replace")))
                c.sendall(data)
        except OSError:
            pass
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def sessions_with(self, size):
        """The event lists of the connections that were handed a file of size bytes."""
        return [ev for ev in list(self.conns) if ("fildes", size) in ev]


def setup(router=None):
    cd = Clamd(harness.tmpdir("clamd"), harness.sigdir())
    harness.cleanup(cd.stop)
    rec = FildesRecorder(os.path.join(harness.tmpdir("rec"), "rec.sock"), cd.socket_path)
    harness.cleanup(rec.stop)
    # The recorder answers the runner's connections: it runs as root, as clamd here.
    sc = dict(name="clamd", type="clamd", addresses=["unix:" + rec.path], timeout=30,
              max_concurrent=2, peer_user="root")
    p = Pipeline(scanners=[sc], router=router)
    return cd, rec, p


def scan_lines(path):
    """{part: [verdict line tokens]} of an entry's verdicts."""
    out = {}
    with open(os.path.join(path, "verdicts"), errors="replace") as f:
        for line in f.read().splitlines():
            if line.startswith("scan "):
                tok = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
                out.setdefault(tok["part"], []).append(tok)
    return out


def unescape(s):
    """The verdict file's \\xHH escapes undone."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), s)


def raw_index(path):
    with open(os.path.join(path, "manifest"), errors="replace") as f:
        for line in f.read().splitlines():
            if line.startswith("part ") and " found=raw " in line:
                return line.split()[1]
    raise AssertionError("no raw part in the manifest")


def attachments_message(n=3, size=100 << 10, subject="three attachments"):
    data = [os.urandom(size) for _ in range(n)]
    import base64
    body = "".join(
        "--B\nContent-Type: application/octet-stream; name=\"f%d.bin\"\n"
        "Content-Transfer-Encoding: base64\n\n%s" % (k, base64.encodebytes(d).decode())
        for k, d in enumerate(data))
    return ("From: sender@example.com\nTo: rcpt@example.org\nSubject: %s\n"
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
            "--B\nContent-Type: text/plain\n\nThree files.\n%s--B--\n" % (subject, body)).encode()


@test(timeout=300)
def raw_part_is_scanned_after_the_decoded_parts():
    cd, rec, p = setup()
    m = attachments_message()
    p.drop("three", m)
    p.pass_all()
    ob = p.outbox()
    assert len(ob) == 1, (p.finals(), p.logtext()[-3000:])
    path = os.path.join(p.spool, "outbox", ob[0][0], ob[0][1])
    assert p.read(path, "message") == m
    ss = rec.sessions_with(len(m))
    assert len(ss) == 1, rec.conns
    ev = ss[0]
    files = [e for e in ev if e[0] == "fildes"]
    # text + 3 attachments, then the raw message: five files in one session
    assert len(files) == 5 and files[-1] == ("fildes", len(m)), ev
    raw_at = ev.index(("fildes", len(m)))
    replies_before = [e for e in ev[:raw_at] if e[0] == "reply"]
    assert len(replies_before) == 4 and all(e[1].endswith(": OK") for e in replies_before), \
        "the raw part went to clamd before every decoded part had its reply: %s" % ev
    assert [e for e in ev[raw_at:] if e[0] == "reply"][-1][1].endswith(": OK"), ev
    # What was delivered, rescanned whole and re-split into parts, is clean.
    p.assert_delivered_clean()


def quarantined(p, name, m):
    """Drop m, run each stage once, and check it ends in quarantine: its path there, its
    verdict lines by part, and the raw part's index."""
    p.drop(name, m)
    p.pass_all()
    finals = p.finals()
    assert [f[0] for f in finals] == ["quarantine"], (finals, p.logtext()[-3000:])
    q = finals[0][2]
    return q, scan_lines(q), raw_index(q)


@test(timeout=300)
def virus_only_in_the_raw_form_is_quarantined():
    """EICAR in a header line: GMime makes no part of a header, so no decoded part holds
    it; clamd's scan of the raw message, after the decoded parts, finds it."""
    cd, rec, p = setup()
    m = msgs.with_attachment(os.urandom(20000), "clean.bin",
                             headers=[("X-Note", msgs.eicar().decode())])
    q, lines, raw = quarantined(p, "hdr", m)
    assert [t["verdict"] for t in lines[raw]] == ["infected"], lines
    assert lines[raw][0]["virus"] == EICAR_NAME, lines
    decoded = [t for k, ts in lines.items() if k != raw for t in ts]
    assert decoded and all(t["verdict"] == "clean" for t in decoded), lines
    ev = rec.sessions_with(len(m))[0]
    raw_at = ev.index(("fildes", len(m)))
    assert len([e for e in ev[:raw_at] if e[0] == "reply"]) == len(decoded), ev
    report = p.read(q, "report").decode(errors="replace")
    assert EICAR_NAME in report
    # Every part was scanned in full: the report names none as not scanned.
    assert "not scanned" not in report, report
    assert "Not scanned" not in report, report
    rj = json.loads(p.read(q, "report.json"))
    assert rj["not_scanned"] == [], rj
    r = p.ctl("quarantine", "release", os.path.basename(q))
    assert r.returncode == 0 and "warning" not in r.out, r.out
    assert [v["part"] for v in rj["viruses"]] == [int(raw)], rj


@test(timeout=300)
def raw_part_skipped_when_a_decoded_part_is_infected():
    cd, rec, p = setup()
    m = msgs.eicar_attachment()
    q, lines, raw = quarantined(p, "virus", m)
    assert any(t["verdict"] == "infected" for k, ts in lines.items() if k != raw for t in ts)
    # Not scanned, and said so: an error line (never clean) with exit=skipped.
    assert [(t["verdict"], t["exit"]) for t in lines[raw]] == [("error", "skipped")], lines
    why = unescape(lines[raw][0]["output"])
    assert why.startswith("not scanned: part ") and "is infected" in why, why
    # clamd was never handed the raw message.
    assert not rec.sessions_with(len(m)), rec.conns
    report = p.read(q, "report").decode(errors="replace")
    assert EICAR_NAME in report
    # The report tells whoever decides on a release (which delivers without looking at
    # the verdicts) that the raw form was never scanned: one line for the raw part and
    # none for the decoded parts, which clamd saw in full.
    unscanned = [l.strip() for l in report.splitlines() if ": not scanned (" in l]
    assert unscanned == ["part %s (raw, no filename): not scanned (clamd: %s)"
                         % (raw, why)], report
    assert "is infected (%s)" % EICAR_NAME in unscanned[0], report
    rj = json.loads(p.read(q, "report.json"))
    assert rj["reason"] == "infected", rj
    assert rj["not_scanned"] == [{"part": int(raw), "scanner": "clamd", "why": why}], rj
    assert rj["viruses"] and all(v["part"] != int(raw) for v in rj["viruses"]), rj
    # ... and spoolctl says it again at the moment of release.
    qid = os.path.basename(q)
    r = p.ctl("quarantine", "release", qid)
    assert r.returncode == 0, r.out
    assert "warning: %s has parts no scanner saw in full" % qid in r.out, r.out


@test(timeout=300)
def stripped_message_is_scanned_raw_again():
    """infected_action = "strip": the original's raw part is skipped (its EICAR part
    decides), the stripped derivative is split and scanned again, raw part included, and
    only that clean scan delivers it."""
    cd, rec, p = setup(router=dict(infected_action="strip"))
    p.drop("strip", msgs.eicar_attachment())
    p.pass_all()
    p.pass_all()  # the derivative, from incoming/
    ob = p.outbox()
    assert len(ob) == 1, (p.finals(), p.entries("incoming"), p.logtext()[-3000:])
    path = os.path.join(p.spool, "outbox", ob[0][0], ob[0][1])
    delivered = p.read(path, "message")
    assert msgs.eicar() not in delivered
    tr = p.read(path, "trace").decode(errors="replace")
    scans = [dict(t.split("=", 1) for t in l.split(" scan ", 1)[1].split() if "=" in t)
             for l in tr.splitlines() if " scan part=" in l]
    assert scans and all(t["verdict"] == "clean" for t in scans), tr
    # The derivative's raw part (its last) was scanned by clamd itself, not skipped...
    last = max(scans, key=lambda t: int(t["part"]))
    assert last["exit"].startswith("unix:"), tr
    # ...and clamd was handed a file of exactly the delivered message's size.
    sizes = [e[1] for ev in rec.conns for e in ev if e[0] == "fildes"]
    assert len(delivered) in sizes, (len(delivered), sizes)
    p.assert_delivered_clean()


if __name__ == "__main__":
    harness.main()
