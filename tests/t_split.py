#!/usr/bin/env python3
"""splitter program tests (issue 3): poison messages, limits, memory on a 100 MB message."""
import base64
import hashlib
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


@test
def poison_message_goes_to_badmail_after_three_crashes():
    if "asan" not in (harness.BIN or ""):
        harness.skip("simulates the crash with a crash point (test build only)")
    p = Pipeline(scanners=[clamscan()])
    p.drop("poison", msgs.clean())
    for i in range(3):
        r = p.stage("splitter", env={"SPOOLD_CRASH_AT": "split-claimed"})
        assert r.returncode == 99, "run %d: want the crash, got exit %d: %s" % (i, r.returncode, r.out)
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    assert p.entries("badmail"), "no badmail entry: %s" % p.entries("incoming")
    q = p.entries("badmail")[0]
    reason = p.read(os.path.join(p.spool, "badmail", q), "reason").decode()
    assert "poison" in reason and "3 times" in reason, reason
    # the rest of the mail keeps flowing
    p.drop("next", msgs.clean(subject="after the poison"))
    p.pass_all()
    assert [f[0] for f in p.finals()].count("outbox/smtp") == 1, p.finals()


@test
def queue_file_becomes_bare_message_envelope_and_raw_part():
    """A queue file is split into the bare message (which the raw part is, inode and
    bytes) and the envelope; the stripped copy is committed under "message", with nothing
    else left behind."""
    p = Pipeline(scanners=[clamscan()])
    m = msgs.clean(subject="queued")
    p.drop("q", msgs.queue_file("s@x.example", ["r1@y.example", "r2@y.example"], m))
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    (q,) = p.entries("scan")
    d = os.path.join(p.spool, "scan", q)
    assert p.read(d, "message") == m
    assert p.read(d, "envelope") == b"Ss@x.example\nRr1@y.example\nRr2@y.example\nE\n"
    assert not os.path.exists(os.path.join(d, "message.body")), os.listdir(d)
    atts = sorted(f for f in os.listdir(d) if f.endswith(".ATT"))
    raw = os.path.join(d, atts[-1])
    assert os.stat(raw).st_ino == os.stat(os.path.join(d, "message")).st_ino, atts
    man = p.read(d, "manifest").decode()
    assert hashlib.sha256(m).hexdigest() in man.splitlines()[-2], man


@test
def queue_file_whose_message_starts_with_the_magic_goes_to_badmail():
    """Such a message would look like a queue file again to a re-run after a crash, so
    it is refused, and badmail keeps the file as it was dropped."""
    p = Pipeline(scanners=[clamscan()])
    q = msgs.queue_file("s@x.example", ["r@y.example"],
                        b"SPOOLD-QUEUE-FILE 1\nSx\nRy\nE\n" + msgs.clean())
    p.drop("twice", q)
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    (b,) = p.entries("badmail")
    d = os.path.join(p.spool, "badmail", b)
    assert "starts with the queue file magic" in p.read(d, "reason").decode()
    assert p.read(d, "message") == q
    assert not os.path.exists(os.path.join(d, "message.body")), os.listdir(d)


@test
def extract_many_files_in_one_process():
    """splitter -o DIR -x F1 F2 F3: each file into DIR/<n> with its manifest after
    "file <n>"; the message is linked, not copied, when it can be; a file that cannot be
    opened is a usage error (64) that names it."""
    t = harness.tmpdir("x")
    ms = [msgs.clean(subject="one"), msgs.with_attachment(b"\x00\x01" * 500, "b.bin"),
          msgs.multipart(3)]
    files = []
    for i, m in enumerate(ms):
        files.append(os.path.join(t, "m%d.eml" % i))
        with open(files[-1], "wb") as f:
            f.write(m)
    out = os.path.join(t, "out")
    r = harness.run([harness.bin_path("splitter"), "-o", out, "-x"] + files)
    assert r.returncode == 0, r.out
    heads = [l for l in r.out.splitlines() if l.startswith("file ")]
    assert heads == ["file 1", "file 2", "file 3"], r.out
    assert r.out.count("\nend ") + r.out.startswith("end ") == 3, r.out
    for i, m in enumerate(ms):
        d = os.path.join(out, str(i + 1))
        assert os.stat(os.path.join(d, "message")).st_ino == os.stat(files[i]).st_ino
        atts = sorted(f for f in os.listdir(d) if f.endswith(".ATT"))
        with open(os.path.join(d, atts[-1]), "rb") as f:
            assert f.read() == m  # the raw part
    with open(os.path.join(out, "2", "0002.ATT"), "rb") as f:
        assert f.read() == b"\x00\x01" * 500
    r = harness.run([harness.bin_path("splitter"), "-o", out + "2", "-x", files[0],
                     os.path.join(t, "missing.eml")])
    assert r.returncode == 64 and "missing.eml" in r.out, r.out


@test
def prescan_counts_message_type_lines_across_the_read_boundary():
    """The pre-scan reads 64 KiB at a time and counts the lines that can start a GMime
    object ("--" lines, lines naming a message/ type, in any case). With max_parts = 2
    the budget is 4096 + 3 * 2 objects, 3 per such line: 1,367 lines fit, the 1,368th
    cuts. Here that line names MESSAGE/ across the 64 KiB boundary, so only a scan that
    carries the line over the boundary sees it; the control has no slash there."""
    p = Pipeline(scanners=[clamscan()], splitter=dict(max_parts=2))
    t = harness.tmpdir("pre")
    head = b"From: a@example.com\nTo: b@example.org\nSubject: pre\n\n"
    body = b"--x\n" * 1367
    filler = b"just some text on a line\n"
    while len(head) + len(body) + len(filler) < 65536 - 200:
        body += filler
    start = len(head) + len(body)
    pad = 65536 - 3 - start  # "MESSAGE" starts 3 bytes before the boundary
    outs = {}
    for name, word in (("cut", b"MESSAGE/rfc822"), ("control", b"MESSAGE-rfc822")):
        m = head + body + b"q" * pad + word + b"\n" + filler * 50
        assert m.index(word) < 65536 < m.index(word) + 7
        f = os.path.join(t, name + ".eml")
        with open(f, "wb") as fh:
            fh.write(m)
        r = harness.run([harness.bin_path("splitter"), "-c", p.conf, "-x", f, "-o",
                         os.path.join(t, name)])
        assert r.returncode == 0, r.out
        outs[name] = r.out
    assert "unscannable over\\x20limit\\x20(max_parts)" in outs["cut"], outs["cut"][-600:]
    assert "unscannable" not in outs["control"], outs["control"][-600:]


@test
def over_limit_is_quarantined_with_the_mark_in_the_report():
    p = Pipeline(scanners=[clamscan()], splitter=dict(max_parts=3))
    p.drop("many", msgs.multipart(10))
    p.pass_all()
    finals = p.finals()
    assert [f[0] for f in finals] == ["quarantine"], finals
    reason = p.read(finals[0][2], "report").decode()
    assert "over limit (max_parts)" in reason, reason
    assert "unscannable over\\x20limit\\x20(max_parts)" in p.read(finals[0][2], "manifest").decode()


@test
def over_size_message_goes_to_badmail_never_passed():
    p = Pipeline(scanners=[clamscan()], splitter=dict(max_message_size=10000))
    p.drop("big", msgs.with_attachment(os.urandom(20000), "big.bin"))
    p.pass_all()
    finals = p.finals()
    assert [f[0] for f in finals] == ["badmail"], finals
    assert "max_message_size" in p.read(finals[0][2], "reason").decode()


@test(timeout=300)
def hundred_megabyte_message_stays_under_32_mb():
    if "asan" in (harness.BIN or ""):
        harness.skip("ASan's shadow memory makes RSS meaningless; measured on the production build")
    d = harness.tmpdir("big")
    path = os.path.join(d, "big.eml")
    with open(path, "wb") as f:
        f.write(b"From: a@example.org\nTo: b@example.org\nSubject: big\nMIME-Version: 1.0\n"
                b"Content-Type: multipart/mixed; boundary=XYZ\n\n--XYZ\nContent-Type: text/plain\n\n"
                b"see attachment\n--XYZ\nContent-Type: application/octet-stream; name=big.bin\n"
                b"Content-Transfer-Encoding: base64\n\n")
        chunk = base64.encodebytes(os.urandom(57 * 1000))
        written = 0
        while written < 100 * 1000 * 1000:
            f.write(chunk)
            written += len(chunk)
        f.write(b"--XYZ--\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([harness.bin_path("splitter"), "-x", path, "-o", os.path.join(d, "out")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=240)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb > before or before < 32 * 1024, "measurement polluted by an earlier child"
    print("    peak RSS %.1f MB for a %d MB message" % (peak_kb / 1024, written // 1000000))
    assert peak_kb < 32 * 1024, "peak RSS %d kB" % peak_kb


if __name__ == "__main__":
    harness.main()
