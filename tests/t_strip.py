#!/usr/bin/env python3
"""infected_action = "strip" (issue 14, item 1), through the real binaries with real
clamscan. The router cuts infected parts by the byte ranges the splitter (GMime) recorded
in the manifest, checked against their sha256, and never delivers the result directly:
the stripped message is a new message (its own queue ID, origin "spoold-strip/<qid>")
that is split and scanned again, and delivered only if that scan is clean; the original
goes to quarantine. Stages run one deterministic pass at a time (--once)."""
import base64
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline  # noqa: E402


def mk(**kw):
    kw.setdefault("extra", "canary_interval = 0;\n")
    r = dict(infected_action="strip", add_scanned_header=True)
    r.update(kw.pop("router", None) or {})
    p = Pipeline(router=r, **kw)
    r = p.stage("splitter")
    assert r.returncode == 0, r.out[-2000:]
    return p


def run_all(p, n=2, env=None):
    """n passes of every stage: the first strips, the second splits, scans and routes
    the stripped message (the splitter picks it up from incoming/ at its start)."""
    for _ in range(n):
        for r in p.pass_all(env=env):
            assert r.returncode == 0, "stage exited %d: %s" % (r.returncode, r.out[-2000:])


def trace(p, place, qid):
    return p.read(os.path.join(p.spool, place, qid), "trace").decode()


def derivative_of(p, qid):
    """The queue ID the quarantined original names as carrying its stripped rest."""
    tr = trace(p, "quarantine", qid)
    m = re.search(r"strip derivative=([0-9a-f-]+)", tr)
    assert m, tr
    return m.group(1)


def eicar_b64():
    return base64.b64encode(msgs.eicar())


def repro_message():
    """A quoted ';' in a Content-Type parameter value: a reader that splits parameters on
    every ';' sees boundary=Q, GMime sees boundary=X. Lines "--Q\"" in the text part
    are delimiters only for the first reading."""
    return (b'From: a@example.com\nTo: b@example.org\nSubject: quoted semicolon\n'
            b'MIME-Version: 1.0\n'
            b'Content-Type: multipart/mixed; foo="z;boundary=Q"; boundary=X\n\n'
            b'--X\nContent-Type: text/plain\n\nhello\n--Q"\n\nnot a part to GMime\n--Q"\n\n'
            b'still text\n--Q"--\n'
            b'--X\nContent-Type: application/octet-stream; name="eicar.com"\n'
            b'Content-Transfer-Encoding: base64\n\n' + eicar_b64() + b'\n--X--\n')


@test
def strip_quoted_semicolon_boundary_does_not_deliver_the_virus():
    p = mk()
    m = repro_message()
    qid = p.inject("a@example.com", ["b@example.org"], m)
    run_all(p)
    for c, q in p.outbox():
        out = p.read(os.path.join(p.spool, "outbox", c, q), "message")
        assert eicar_b64() not in out, "the EICAR attachment was delivered in %s/%s" % (c, q)
    assert p.entries("quarantine") == [qid], p.finals()
    # A boundary= inside another quoted parameter can be read two ways: the splitter
    # marks the message unscannable (tests/t_differential.py), so it is quarantined
    # whole and nothing is cut; that strip's ranges fall where GMime puts the parts of
    # this message is tests/unit/test_strip.c's.
    report = p.read(os.path.join(p.spool, "quarantine", qid), "report").decode()
    manifest = p.read(os.path.join(p.spool, "quarantine", qid), "manifest").decode()
    assert "unscannable ambiguous\\x20structure\\x20(conflicting\\x20boundary" in manifest, manifest
    assert "not split whole (unscannable)" in report, report
    assert p.outbox() == [], p.finals()
    assert p.in_flight() == 0


@test
def strip_derivative_is_scanned_again_and_traced_under_both_qids():
    p = mk()
    m = msgs._bytes(msgs._mixed("Hello, see the files.\n",
                                [(msgs.eicar(), "eicar.com", "application/octet-stream"),
                                 (b"plain data that is clean\n" * 20, "data.txt", "text/plain")],
                                {"subject": "strip me"}), False)
    qid = p.inject("alice@example.com", ["bob@example.org"], m)
    run_all(p)
    d = derivative_of(p, qid)
    assert d != qid
    assert p.outbox() == [("smtp", d)], p.finals()
    assert p.entries("quarantine") == [qid], p.finals()
    path = os.path.join(p.spool, "outbox", "smtp", d)
    tr = p.read(path, "trace").decode()
    # its own history: made by the router from qid, then split, scanned, routed itself
    assert "derived from=%s action=strip" % qid in tr, tr
    for ev in (" split parts=", " scan ", " outbox connector=smtp"):
        assert ev in tr, (ev, tr)
    assert p.read(path, "envelope").decode() == "Salice@example.com\nRbob@example.org\nE\n"
    out = p.read(path, "message")
    # the X-Virus-Scanned header comes from the derivative's own scan (and only one)
    assert out.startswith(b"X-Virus-Scanned: ") and out.count(b"X-Virus-Scanned:") == 1, out[:300]
    assert msgs.eicar() not in out and eicar_b64() not in out
    assert base64.b64encode(b"plain data that is clean\n" * 20)[:40] in out
    rep = p.read(os.path.join(p.spool, "quarantine", qid), "report").decode()
    assert "stripped" in rep and d in rep, rep
    rj = json.loads(p.read(os.path.join(p.spool, "quarantine", qid), "report.json"))
    assert rj["reason"] == "infected" and rj["stripped"] == d, rj
    assert "strip part=2" in trace(p, "quarantine", qid)


@test
def strip_derivative_infected_again_is_quarantined_not_stripped_again():
    p = mk()
    m = msgs.eicar_attachment()
    qid = p.inject("alice@example.com", ["bob@example.org"], m)
    for r in p.pass_all():
        assert r.returncode == 0, r.out[-2000:]
    d = derivative_of(p, qid)
    assert p.entries("incoming") == [d], p.entries("incoming")
    # The derivative turns out infected on its own scan (here: the stripped message is
    # replaced by one with the attachment still in it, as a strip that missed would make).
    with open(os.path.join(p.spool, "incoming", d, "message"), "wb") as f:
        f.write(m)
    run_all(p, n=2)
    assert p.outbox() == [], p.finals()
    assert p.entries("quarantine") == sorted([qid, d]), p.finals()
    rep = p.read(os.path.join(p.spool, "quarantine", d), "report").decode()
    assert "strip derivative of %s" % qid in rep and "not stripped twice" in rep, rep
    assert "strip derivative=" not in trace(p, "quarantine", d)
    assert not os.path.exists(os.path.join(p.spool, "quarantine", d, "strip"))
    assert p.in_flight() == 0


@test
def strip_message_changed_after_split_quarantines():
    p = mk()
    m = msgs.eicar_attachment()
    qid = p.inject("alice@example.com", ["bob@example.org"], m)
    for s in ("splitter", "scanner-runner"):
        assert p.stage(s).returncode == 0
    path = os.path.join(p.spool, "route", qid)
    man = p.read(path, "manifest").decode()
    ent = re.search(r"part 2 .* entity_start=(\d+) entity_end=(\d+)", man)
    assert ent, man
    # one byte inside the infected part's entity changes: its hash no longer matches
    data = bytearray(p.read(path, "message"))
    at = int(ent.group(1)) + 2
    data[at] = ord("x") if data[at] != ord("x") else ord("y")
    with open(os.path.join(path, "message"), "wb") as f:
        f.write(bytes(data))
    assert p.stage("router").returncode == 0
    run_all(p, n=1)
    assert p.outbox() == [] and p.entries("quarantine") == [qid], p.finals()
    rep = p.read(os.path.join(p.spool, "quarantine", qid), "report").decode()
    assert "sha256 differs" in rep, rep
    assert "strip derivative=" not in trace(p, "quarantine", qid)
    assert p.in_flight() == 0


@test
def strip_manifest_without_ranges_quarantines():
    p = mk()
    qid = p.inject("alice@example.com", ["bob@example.org"], msgs.eicar_attachment())
    for s in ("splitter", "scanner-runner"):
        assert p.stage(s).returncode == 0
    path = os.path.join(p.spool, "route", qid)
    man = p.read(path, "manifest").decode()
    man = re.sub(r" entity_start=\d+ entity_end=\d+ entity_sha256=[0-9a-f]+", "", man)
    with open(os.path.join(path, "manifest"), "w") as f:
        f.write(man)
    run_all(p, n=1)
    assert p.outbox() == [] and p.entries("quarantine") == [qid], p.finals()
    rep = p.read(os.path.join(p.spool, "quarantine", qid), "report").decode()
    assert "cannot be cut out" in rep, rep


@test
def strip_plain_eicar_attachment_delivers_the_clean_rest_exactly_once():
    p = mk(router=dict(add_scanned_header=False))
    m = msgs.eicar_attachment(text="Keep this text.\n")
    qid = p.inject("alice@example.com", ["bob@example.org"], m)
    run_all(p, n=3)
    d = derivative_of(p, qid)
    assert p.outbox() == [("smtp", d)], p.finals()
    assert p.entries("quarantine") == [qid]
    out = p.read(os.path.join(p.spool, "outbox", "smtp", d), "message")
    # every byte outside the cut entity is as received
    b = b"--=_spoold_test_boundary_1"
    o, n = m.split(b), out.split(b)
    assert len(o) == len(n) == 4 and o[0] == n[0] and o[1] == n[1] and o[3] == n[3], out
    assert b"This part was removed by spoold" in n[2] and eicar_b64() not in out
    assert p.read(os.path.join(p.spool, "quarantine", qid), "message") == m
    assert p.in_flight() == 0 and p.entries("trash") == []


@test
def strip_released_original_is_delivered_as_received():
    # The administrator's release beats the finished strip plan left in the entry.
    p = mk(router=dict(add_scanned_header=False),
           invariant="delivers the released EICAR original on purpose")
    m = msgs.eicar_attachment()
    qid = p.inject("alice@example.com", ["bob@example.org"], m)
    run_all(p)
    d = derivative_of(p, qid)
    r = p.ctl("quarantine", "release", qid)
    assert r.returncode == 0, r.out
    run_all(p, n=1)
    assert p.outbox() == sorted([("smtp", d), ("smtp", qid)]), p.finals()
    assert p.read(os.path.join(p.spool, "outbox", "smtp", qid), "message") == m
    assert p.entries("quarantine") == [] and p.in_flight() == 0


@test
def strip_with_spoold_running_delivers_the_rest_once():
    # The splitter picks the derivative up from incoming/ by itself (its tick), the
    # whole pipeline runs under spoold, the rest lands in a Maildir once.
    md = os.path.join(harness.tmpdir("md"), "Maildir")
    p = Pipeline(router=dict(infected_action="strip"), extra="canary_interval = 0;\n",
                 connectors=[dict(name="local", domains=["*"], type="maildir", maildir=md)])
    p.start()
    m = msgs.eicar_attachment(text="Keep this text.\n")
    p.drop("m", m)
    new = os.path.join(md, "new")
    harness.wait_for(lambda: os.path.isdir(new) and os.listdir(new) and p.entries("quarantine"),
                     timeout=90, what="the stripped rest in the Maildir\n" + p.logtext()[-2000:])
    harness.wait_for(lambda: p.outbox() == [] and p.in_flight() == 0, timeout=30,
                     what="the pipeline idle")
    names = os.listdir(new)
    assert len(names) == 1, names
    data = open(os.path.join(new, names[0]), "rb").read()
    assert b"Keep this text." in data and b"This part was removed by spoold" in data
    assert eicar_b64() not in data and msgs.eicar() not in data
    q = p.entries("quarantine")
    assert len(q) == 1 and p.read(os.path.join(p.spool, "quarantine", q[0]), "message") == m
    p.assert_delivered_clean([("maildir " + names[0], data)])


@test
def strip_a_text_body_still_quarantines():
    p = mk()
    qid = p.inject("alice@example.com", ["bob@example.org"], msgs.eicar_inline_text())
    run_all(p, n=1)
    assert p.outbox() == [] and p.entries("quarantine") == [qid], p.finals()


if __name__ == "__main__":
    harness.main()
