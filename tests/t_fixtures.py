#!/usr/bin/env python3
"""Tests of the test fixtures themselves, through the real programs they stand for:
conf/mksigs.sh + clamscan, the Clamd fixture + a raw zINSTREAM, the fake clamd servers,
the fake scanners (run with a scrubbed environment, as scanner-runner runs them), the
message builders, and tests/run.py itself."""

import email
import email.policy
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import lib as harness
from lib import cleanup, skip, test, wait_for
from lib import msgs
from lib.clamd import (Clamd, FakeClamdCloser, FakeClamdSilent, command, connect,
                       instream, ping)

EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
CLAMEXE = "/usr/share/clamav-testfiles/clam.exe"
SCRUBBED = {"PATH": "/usr/bin:/bin"}


def clamscan(dbdir, *files):
    """Run clamscan with only dbdir; returns (exit status, {file: result})."""
    if not shutil.which("clamscan"):
        skip("clamscan not installed (Debian package clamav)")
    r = harness.run(["clamscan", "--no-summary", "-d", dbdir] + list(files), timeout=120)
    res = {}
    for line in r.out.splitlines():
        f, sep, what = line.rpartition(": ")
        if sep and f in files:
            res[f] = what
    assert r.returncode in (0, 1), "clamscan failed (exit %d): %s" % (r.returncode, r.out)
    return r.returncode, res


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def only_db(kind):
    """A database directory holding just spoold-test.<kind>."""
    d = harness.tmpdir("db-" + kind)
    shutil.copy(os.path.join(harness.sigdir(), "spoold-test." + kind), d)
    return d


# ---- conf/mksigs.sh ---------------------------------------------------------------

@test
def mksigs_output_files():
    d = harness.sigdir()
    assert sorted(os.listdir(d)) == ["eicar-encrypted.zip", "eicar-nested20.zip", "eicar.com",
                                      "spoold-test.hdb", "spoold-test.ndb"], \
        "unexpected files: %s" % sorted(os.listdir(d))
    e = open(os.path.join(d, "eicar.com"), "rb").read()
    assert len(e) == 68, "eicar.com has %d bytes" % len(e)
    assert e == msgs.eicar(), "eicar.com differs from msgs.eicar()"
    assert hashlib.md5(e).hexdigest() == EICAR_MD5, "EICAR md5 %s" % hashlib.md5(e).hexdigest()
    hdb = open(os.path.join(d, "spoold-test.hdb")).read().splitlines()
    clam_md5 = hashlib.md5(open(CLAMEXE, "rb").read()).hexdigest()
    assert hdb == ["%s:68:Spoold.Test.EICAR.HDB" % EICAR_MD5,
                   "%s:%d:Spoold.Test.ClamExe.HDB" % (clam_md5, os.path.getsize(CLAMEXE))], \
        "hdb: %r" % hdb
    ndb = open(os.path.join(d, "spoold-test.ndb")).read().splitlines()
    middle = msgs.eicar()[len("X5O!P%@AP[4\\PZX54(P^)7CC)7}$"):-len("!$H+H*")]
    assert ndb == ["Spoold.Test.EICAR.NDB:0:*:" + middle.hex()], "ndb: %r" % ndb


@test
def mksigs_idempotent():
    d = harness.tmpdir("sigs-again")
    first = {}
    for i in range(2):
        r = harness.run([os.path.join(harness.ROOT, "conf", "mksigs.sh"), d], timeout=120,
                        check=True)
        assert "UNOFFICIAL FOUND" in r.out, r.out
        files = sorted(os.listdir(d))
        assert files == ["eicar-encrypted.zip", "eicar-nested20.zip", "eicar.com",
                         "spoold-test.hdb", "spoold-test.ndb"], \
            "run %d left %s" % (i + 1, files)
        now = {f: open(os.path.join(d, f), "rb").read() for f in files}
        if i == 0:
            first = now
        assert now == first, "second run produced different files"


@test
def mksigs_usage_error():
    r = harness.run([os.path.join(harness.ROOT, "conf", "mksigs.sh")], timeout=30)
    assert r.returncode != 0 and "usage" in r.out, "exit %d: %s" % (r.returncode, r.out)


@test
def mksigs_not_flagged_by_own_db():
    """The repository files that build EICAR must not contain it (nor the NDB body)."""
    files = [os.path.join(harness.ROOT, "conf", "mksigs.sh"),
             os.path.join(harness.TESTS, "lib", "msgs.py"), os.path.abspath(__file__)]
    rc, res = clamscan(harness.sigdir(), *files)
    assert rc == 0 and all(res.get(f) == "OK" for f in files), "flagged: %s" % res


@test
def clamscan_eicar_hdb_and_ndb():
    e = os.path.join(harness.sigdir(), "eicar.com")
    rc, res = clamscan(harness.sigdir(), e)
    assert rc == 1, "exit %d: %s" % (rc, res)
    assert res[e] in ("Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND",
                      "Spoold.Test.EICAR.HDB.UNOFFICIAL FOUND"), res
    rc, res = clamscan(only_db("hdb"), e)
    assert rc == 1 and res[e] == "Spoold.Test.EICAR.HDB.UNOFFICIAL FOUND", res
    rc, res = clamscan(only_db("ndb"), e)
    assert rc == 1 and res[e] == "Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND", res


@test
def clamscan_embedded_eicar_ndb_only():
    t = harness.tmpdir("embedded")
    f = write(os.path.join(t, "inline.txt"), b"some text before " + msgs.eicar() + b" and after\n")
    rc, res = clamscan(harness.sigdir(), f)
    assert rc == 1 and res[f] == "Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND", res
    rc, res = clamscan(only_db("hdb"), f)  # the hash signature needs the exact file
    assert rc == 0 and res[f] == "OK", res
    m = write(os.path.join(t, "inline.eml"), msgs.eicar_inline_text())
    rc, res = clamscan(harness.sigdir(), m)
    assert rc == 1 and "Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND" == res[m], res


@test
def clamscan_clam_exe():
    if not os.path.exists(CLAMEXE):
        skip("%s missing (Debian package clamav-testfiles)" % CLAMEXE)
    rc, res = clamscan(harness.sigdir(), CLAMEXE)
    assert rc == 1 and res[CLAMEXE] == "Spoold.Test.ClamExe.HDB.UNOFFICIAL FOUND", res


@test
def clamscan_clean_passes():
    t = harness.tmpdir("cleanfiles")
    files = [write(os.path.join(t, "hello.txt"), b"hello world\n"),
             write(os.path.join(t, "clean.eml"), msgs.clean()),
             write(os.path.join(t, "multi.eml"), msgs.multipart(5)),
             write(os.path.join(t, "uu.eml"), msgs.uuencoded(b"harmless\n" * 20))]
    rc, res = clamscan(harness.sigdir(), *files)
    assert rc == 0 and all(res.get(f) == "OK" for f in files), "exit %d: %s" % (rc, res)


@test
def clamscan_messages_with_eicar():
    """clamscan decodes mail itself: the raw messages that carry EICAR are detected."""
    t = harness.tmpdir("badmsgs")
    files = [write(os.path.join(t, n + ".eml"), data) for n, data in [
        ("attachment", msgs.eicar_attachment()),
        ("nested", msgs.nested_rfc822()),
        ("uu", msgs.uuencoded(msgs.eicar(), "eicar.com")),
        ("queue-inline", msgs.queue_file("a@example.com", ["b@example.org"],
                                         msgs.eicar_inline_text()))]]
    rc, res = clamscan(harness.sigdir(), *files)
    assert rc == 1, "exit %d: %s" % (rc, res)
    for f in files:
        assert res.get(f, "").startswith("Spoold.Test.EICAR.") and res[f].endswith(
            ".UNOFFICIAL FOUND"), "%s: %s" % (os.path.basename(f), res.get(f))


# ---- Clamd ------------------------------------------------------------------------

def raw_instream(addr, data, chunk=1000):
    """zINSTREAM written out by hand (independent of lib.clamd.instream)."""
    path = addr[len("unix:"):]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), chunk):
            s.sendall(struct.pack(">I", len(data[i:i + chunk])) + data[i:i + chunk])
        s.sendall(b"\0\0\0\0")
        reply = b""
        while not reply.endswith(b"\0"):
            b = s.recv(100)
            if not b:
                break
            reply += b
        return reply
    finally:
        s.close()


@test(timeout=120)
def clamd_detects_eicar_raw_instream():
    d = Clamd(harness.tmpdir("clamd"), harness.sigdir(), tcp=True)
    cleanup(d.stop)
    assert d.unix_addr == "unix:" + os.path.join(d.tmpdir, "clamd.sock"), d.unix_addr
    assert d.tcp_addr and d.tcp_addr.startswith("tcp:127.0.0.1:"), d.tcp_addr
    assert d.running() and ping(d.unix_addr) and ping(d.tcp_addr), d.log()[-2000:]
    assert command(d.unix_addr, "VERSION").startswith("ClamAV "), "VERSION"
    reply = raw_instream(d.unix_addr, msgs.eicar(), chunk=10)
    assert reply == b"stream: Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND\0", reply
    reply = raw_instream(d.unix_addr, b"x" * 5000 + msgs.eicar() + b"y" * 5000)
    assert reply == b"stream: Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND\0", reply
    assert raw_instream(d.unix_addr, b"hello, clean world\n") == b"stream: OK\0"
    assert d.scan(open(CLAMEXE, "rb").read(), addr=d.tcp_addr) == \
        "stream: Spoold.Test.ClamExe.HDB.UNOFFICIAL FOUND"
    assert d.scan(msgs.nested_rfc822()).startswith("stream: Spoold.Test.EICAR.")
    assert d.scan(msgs.clean()) == "stream: OK"
    conf = open(d.conf_path).read()
    for opt in ("Foreground yes", "LocalSocket " + d.socket_path,
                "DatabaseDirectory " + harness.sigdir(), "TCPAddr 127.0.0.1"):
        assert opt + "\n" in conf, "clamd.conf lacks %r" % opt
    assert "PidFile" not in conf and "\nUser " not in conf, conf
    pid = d.pid
    assert d.stop() is not None and not d.running()
    assert not os.path.exists("/proc/%d" % pid) or \
        open("/proc/%d/stat" % pid).read().split()[2] == "Z", "clamd still running"
    assert not ping(d.unix_addr, timeout=0.5), "socket still answers after stop()"


@test(timeout=120)
def clamd_stream_max_length():
    with Clamd(harness.tmpdir("clamd-small"), harness.sigdir(), stream_max_length=4096) as d:
        assert "StreamMaxLength 4096\n" in open(d.conf_path).read()
        assert d.scan(b"a" * 4000) == "stream: OK"
        r = d.scan(b"a" * 100000)
        assert "size limit exceeded" in r, r
        assert d.ping(), "clamd died after an oversized stream"
    assert not d.running()


@test(timeout=60)
def clamd_bad_dbdir_fails_fast():
    t0 = time.monotonic()
    try:
        Clamd(harness.tmpdir("clamd-bad"), "/nonexistent/db", timeout=20).stop()
    except RuntimeError as e:
        assert "clamd" in str(e)
    else:
        raise AssertionError("Clamd started with a missing database directory")
    assert time.monotonic() - t0 < 15, "took %.1fs to notice" % (time.monotonic() - t0)


# ---- fake clamd servers -------------------------------------------------------------

@test(timeout=60)
def fake_clamd_silent_never_answers():
    t = harness.tmpdir("silent")
    with FakeClamdSilent(os.path.join(t, "s.sock")) as f:
        assert f.addr == "unix:" + os.path.join(t, "s.sock")
        s = connect(f.addr, timeout=1.0)
        try:
            s.sendall(b"zPING\0")
            t0 = time.monotonic()
            try:
                b = s.recv(10)
            except socket.timeout:
                pass
            else:
                raise AssertionError("silent server answered %r" % b)
            assert time.monotonic() - t0 >= 0.9
        finally:
            s.close()
        assert f.connections == 1, f.connections
        assert not ping(f.addr, timeout=0.5)
        # without drain, a big stream cannot be written completely
        s = connect(f.addr, timeout=1.0)
        try:
            sent = 0
            try:
                while sent < 64 << 20:
                    sent += s.send(b"\0" * 65536)
            except socket.timeout:
                pass
            assert sent < 64 << 20, "64 MiB written to a server that never reads"
        finally:
            s.close()
    assert not os.path.exists(os.path.join(t, "s.sock")), "socket file left after stop()"


@test(timeout=60)
def fake_clamd_silent_drain_tcp():
    with FakeClamdSilent(None, drain=True) as f:
        assert f.addr.startswith("tcp:127.0.0.1:") and f.tcp_addr == f.addr
        s = connect(f.addr, timeout=1.0)
        try:
            s.sendall(b"zINSTREAM\0" + struct.pack(">I", 100000) + b"a" * 100000 + b"\0\0\0\0")
            wait_for(lambda: f.received >= 100014, timeout=10, what="server to drain the stream")
            try:
                b = s.recv(10)
            except socket.timeout:
                pass
            else:
                raise AssertionError("silent server answered %r" % b)
        finally:
            s.close()


@test(timeout=60)
def fake_clamd_closer_closes():
    t = harness.tmpdir("closer")
    with FakeClamdCloser(os.path.join(t, "c.sock"), nbytes=64) as f:
        t0 = time.monotonic()
        reply = instream(f.addr, b"a" * (1 << 20), timeout=10)
        assert reply == "", "closer answered %r" % reply
        assert time.monotonic() - t0 < 8, "closer took %.1fs" % (time.monotonic() - t0)
        wait_for(lambda: f.connections == 1 and f.received > 0, timeout=5,
                 what="closer to count the connection")
        assert f.received <= 64, f.received
        assert not ping(f.addr, timeout=2.0)


# ---- fake scanners ----------------------------------------------------------------

def fake(name, *args, timeout=20, **kw):
    path = os.path.join(harness.FAKE, name)
    assert os.access(path, os.X_OK), "%s is not executable" % path
    return harness.run([path] + list(args), timeout=timeout, env=SCRUBBED, **kw)


@test
def fake_clean_and_infect():
    r = fake("clean", "/x/0001.ATT", "/x/0002.ATT")
    assert r.returncode == 0 and r.out == "/x/0001.ATT: OK\n/x/0002.ATT: OK\n", (r.returncode, r.out)
    r = fake("infect", "/x/0001.ATT")
    assert r.returncode == 1 and r.out == "/x/0001.ATT: Fake.Virus FOUND\n", (r.returncode, r.out)


@test
def fake_exit7_garbage_segv():
    r = fake("exit7", "f")
    assert r.returncode == 7, r.returncode
    r = fake("garbage", "f")
    assert r.returncode == 3, r.returncode
    assert len(r.stdout) == 4096 and b"\0" in r.stdout and b"\xff" in r.stdout, len(r.stdout)
    assert fake("garbage", "f").stdout == r.stdout, "garbage is not deterministic"
    t = harness.tmpdir("segv")
    r = fake("segv", "f", cwd=t)
    assert r.returncode == -signal.SIGSEGV, r.returncode
    assert os.listdir(t) == [], "segv left files: %s" % os.listdir(t)


@test(timeout=60)
def fake_hang_ignores_sigterm():
    p = subprocess.Popen([os.path.join(harness.FAKE, "hang"), "f"], env=SCRUBBED,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        line = p.stdout.readline()
        assert line.startswith(b"hang: started"), line
        os.killpg(p.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None, "hang exited on SIGTERM"
        os.killpg(p.pid, signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


@test(timeout=60)
def fake_flaky_alternates():
    t = harness.tmpdir("flaky")
    state = os.path.join(t, "state")
    for attempt in range(1, 5):
        try:
            r = fake("flaky", state, "/x/f", timeout=1.5)
        except subprocess.TimeoutExpired:
            assert attempt % 2 == 1, "attempt %d timed out" % attempt
        else:
            assert attempt % 2 == 0 and r.returncode == 0 and r.out == "/x/f: OK\n", \
                "attempt %d: exit %d %r" % (attempt, r.returncode, r.out)
        assert open(state).read() == "%d\n" % attempt
    # "-": the state lives next to the first file
    f = write(os.path.join(t, "0001.ATT"), b"x")
    try:
        fake("flaky", "-", f, timeout=1.0)
        raise AssertionError("first attempt did not hang")
    except subprocess.TimeoutExpired:
        pass
    assert fake("flaky", "-", f).returncode == 0
    assert open(os.path.join(t, ".flaky-state")).read() == "2\n"


@test(timeout=60)
def fake_record_detects_overlap():
    t = harness.tmpdir("record")
    rec = os.path.join(t, "rec")
    assert fake("record", rec, "a").returncode == 0
    assert fake("record", rec, "b").returncode == 0
    text = open(rec).read()
    assert "OVERLAP" not in text, text
    assert [l.split()[0] for l in text.splitlines()] == ["start", "end", "start", "end"], text
    path = os.path.join(harness.FAKE, "record")
    ps = [subprocess.Popen([path, "--sleep=1", rec, "c%d" % i], env=SCRUBBED,
                           stdout=subprocess.DEVNULL) for i in range(3)]
    assert [p.wait(20) for p in ps] == [0, 0, 0]
    lines = open(rec).read().splitlines()[4:]
    assert sum(l.startswith("OVERLAP") for l in lines) == 2, lines
    assert max(int(l.split("running=")[1].split()[0]) for l in lines if "running=" in l) == 3
    # a copy killed while running is not counted later
    rec2 = os.path.join(t, "rec2")
    p = subprocess.Popen([path, "--sleep=30", rec2, "k"], env=SCRUBBED)
    wait_for(lambda: os.path.exists(rec2) and "start" in open(rec2).read(), timeout=10,
             what="record to start")
    p.kill()
    p.wait()
    assert fake("record", rec2, "after").returncode == 0
    assert "OVERLAP" not in open(rec2).read(), open(rec2).read()


# ---- message builders ---------------------------------------------------------------

def parse(b):
    return email.message_from_bytes(b, policy=email.policy.default)


@test
def msgs_builders():
    e = msgs.eicar()
    assert len(e) == 68 and hashlib.md5(e).hexdigest() == EICAR_MD5
    m = parse(msgs.clean(subject="s1", to=["a@x.org", "b@x.org"], frm="f@y.org"))
    assert m["Subject"] == "s1" and m["From"] == "f@y.org" and m["To"] == "a@x.org, b@x.org"
    m = parse(msgs.eicar_attachment())
    atts = [p for p in m.iter_attachments()]
    assert len(atts) == 1 and atts[0].get_filename() == "eicar.com"
    assert atts[0]["Content-Transfer-Encoding"] == "base64" and atts[0].get_content() == e
    m = parse(msgs.with_attachment(b"\x00\x01binary", "b.bin", "application/x-thing"))
    att = next(m.iter_attachments())
    assert att.get_content_type() == "application/x-thing" and att.get_content() == b"\x00\x01binary"
    raw = msgs.eicar_inline_text()
    assert b"\n" + b"see " + e + b" here\n" in raw and b"Content-Transfer-Encoding: 7bit" in raw
    m = parse(msgs.multipart(4))
    leaves = [p for p in m.walk() if not p.is_multipart()]
    assert len(leaves) == 4, len(leaves)
    m = parse(msgs.nested_rfc822())
    inner = [p for p in m.walk() if p.get_content_type() == "message/rfc822"]
    assert len(inner) == 1
    inner_msg = inner[0].get_content()
    iatt = list(inner_msg.iter_attachments())
    assert len(iatt) == 1 and iatt[0].get_content() == e and iatt[0].get_filename() == "eicar.com"
    data = bytes(range(256)) * 3
    raw = msgs.uuencoded(data, "blob.bin")
    assert b"\nbegin 644 blob.bin\n" in raw and b"\n`\nend\n" in raw
    import binascii
    body = raw.split(b"begin 644 blob.bin\n", 1)[1].split(b"\n`\nend\n", 1)[0]
    assert b"".join(binascii.a2b_uu(l) for l in body.split(b"\n")) == data
    crlf = msgs.clean(crlf=True)
    assert b"\r\n" in crlf and b"\n" not in crlf.replace(b"\r\n", b"")


@test
def msgs_deterministic():
    a = msgs.nested_rfc822(msgid="<x@y>")
    b = msgs.nested_rfc822(msgid="<x@y>")
    strip = lambda x: b"\n".join(l for l in x.split(b"\n") if not l.startswith(b"Message-ID:"))
    assert strip(a) == strip(b), "two builds differ"
    assert b"=_spoold_test_boundary_1" in a and b"=_spoold_test_boundary_2" in a


@test
def msgs_queue_file_and_drop():
    q = msgs.queue_file("s@x.org", ["r1@y.org", "r2@y.org"], b"Subject: t\n\nbody\n")
    assert q == (b"SPOOLD-QUEUE-FILE 1\nSs@x.org\nRr1@y.org\nRr2@y.org\nE\n"
                 b"Subject: t\n\nbody\n"), q
    assert msgs.queue_file("", "r@y.org", "x").startswith(b"SPOOLD-QUEUE-FILE 1\nS\nRr@y.org\nE\n")
    assert msgs.envelope("s@x", ["r@y"]) == b"Ss@x\nRr@y\nE\n"
    d = harness.tmpdir("inbound")
    p = msgs.drop(d, "m1", q)
    assert p == os.path.join(d, "m1") and open(p, "rb").read() == q and os.listdir(d) == ["m1"]


# ---- harness and runner -------------------------------------------------------------

@test
def harness_wait_for():
    assert wait_for(lambda: 42, timeout=1) == 42
    t0 = time.monotonic()
    try:
        wait_for(lambda: False, timeout=0.3, what="the impossible")
    except AssertionError as e:
        assert "the impossible" in str(e), str(e)
    else:
        raise AssertionError("wait_for did not raise")
    assert 0.3 <= time.monotonic() - t0 < 2


RUNNER_CASES = {
    "t_good.py": """
import lib as harness
from lib import test, skip
@test
def ok(): assert harness.BIN
@test
def skipped(): skip("not today")
harness.main()
""",
    "t_bad.py": """
from lib import test, main
@test
def fails(): assert 1 == 2, "one is not two"
@test
def raises(): {}["k"]
@test
def fine(): pass
main()
""",
    "t_crash.py": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "t_hang.py": "import time\nprint('PASS before_hang', flush=True)\ntime.sleep(600)\n",
    "t_silent.py": "pass\n",
}


@test(timeout=120)
def runner_counts_and_fails():
    t = harness.tmpdir("runner")
    tests = os.path.join(t, "tests")
    os.mkdir(tests)
    os.symlink(os.path.join(harness.TESTS, "lib"), os.path.join(tests, "lib"))
    for name, src in RUNNER_CASES.items():
        write(os.path.join(tests, name), src.encode())
    bindir = os.path.join(t, "build", "bin")
    os.makedirs(bindir)
    os.makedirs(os.path.join(t, "build", "tests"))
    unit = write(os.path.join(t, "build", "tests", "unit_demo"),
                 b"#!/bin/sh\necho 'PASS u1'\necho 'FAIL u2: broken'\nexit 1\n")
    os.chmod(unit, 0o755)
    runner = os.path.join(harness.TESTS, "run.py")
    r = harness.run([sys.executable, runner, "--bin", bindir, "--tests-dir", tests,
                     "--timeout", "3", "--label", "demo"], timeout=90)
    lines = r.out.splitlines()
    assert r.returncode == 1, "exit %d:\n%s" % (r.returncode, r.out)
    # passed: u1, ok, fine, before_hang; failed: u2, fails, raises, crash, hang, silent
    assert lines[-1] == "4 passed, 6 failed, 1 skipped", "last line %r:\n%s" % (lines[-1], r.out)
    for want in ("FAIL u2: broken", "FAIL fails: one is not two", "FAIL raises: KeyError",
                 "FAIL demo/t_crash: killed by signal 9", "FAIL demo/t_hang: timed out after 3s",
                 "FAIL demo/t_silent: printed no PASS/FAIL/SKIP line", "SKIP skipped: not today"):
        assert any(l.startswith(want) for l in lines), "no line %r:\n%s" % (want, r.out)
    r = harness.run([sys.executable, runner, "--bin", bindir, "--tests-dir", tests,
                     "--only", "t_good"], timeout=60)
    assert r.returncode == 0 and r.out.splitlines()[-1] == "1 passed, 0 failed, 1 skipped", r.out
    r = harness.run([sys.executable, runner, "--bin", bindir, "--tests-dir", tests,
                     "--only", "t_bad:fine"], timeout=60)
    assert r.returncode == 0 and r.out.splitlines()[-1] == "1 passed, 0 failed, 0 skipped", r.out
    # side by side (--jobs): the same results, each program's lines kept together
    r = harness.run([sys.executable, runner, "--bin", bindir, "--tests-dir", tests,
                     "--timeout", "3", "--label", "demo", "--jobs", "4"], timeout=90)
    lines = r.out.splitlines()
    assert r.returncode == 1 and lines[-1] == "4 passed, 6 failed, 1 skipped", r.out
    for want in ("FAIL demo/t_crash: killed by signal 9", "FAIL demo/t_hang: timed out after 3s"):
        assert any(l.startswith(want) for l in lines), "no line %r:\n%s" % (want, r.out)
    for name in ("demo/t_bad", "demo/t_good", "demo/t_hang"):
        block = lines.index("=== " + name)
        end = next(i for i, l in enumerate(lines) if l.startswith("=== %s: " % name))
        assert all(not l.startswith("=== ") for l in lines[block + 1:end]), \
            "the lines of %s are mixed with another program's:\n%s" % (name, r.out)
    # several --bin: the suite runs once per build, the counts add up
    other = os.path.join(t, "build2", "bin")
    os.makedirs(other)
    r = harness.run([sys.executable, runner, "--bin", bindir, "--bin", other, "--tests-dir",
                     tests, "--only", "t_good"], timeout=60)
    assert r.returncode == 0 and r.out.splitlines()[-1] == "2 passed, 0 failed, 2 skipped", r.out
    assert "=== build/t_good" in r.out and "=== build2/t_good" in r.out, r.out


if __name__ == "__main__":
    harness.main()
