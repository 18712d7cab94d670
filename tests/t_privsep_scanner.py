#!/usr/bin/env python3
"""Privilege separation, the scanner part (issue 15): with scanner_user set and spoold
started as root, every exec scanner runs as that user through the scanner broker
(lib/broker.h), gets the parts of its message as descriptors (/dev/fd/N), can read those
and nothing else of the spool, and can write nothing in it. A broker killed -9 makes
spoold exit 75; nothing is delivered unscanned.

The spool's user is nobody (as in t_privsep_root); the scanner user is daemon, a user of
its own that is not in nobody's group. Every test needs root (spoold must start as root
to start the broker) and is skipped, saying so, when not root."""
import errno
import json
import os
import pwd
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, skip, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

SCAN_USER = "daemon"


def _users():
    if os.geteuid() != 0:
        skip("needs root: spoold must start as root to start the scanner broker")
    try:
        return pwd.getpwnam("nobody"), pwd.getpwnam(SCAN_USER)
    except KeyError as e:
        skip("no user %s" % e)


def _rec_dir():
    """A directory outside the spool where the scanner user may write what it saw."""
    d = harness.tmpdir("rec")
    os.chmod(d, 0o777)
    return d


def _script(name, text):
    d = harness.tmpdir("scripts")
    os.chmod(d, 0o755)
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def _wrapper(rec):
    """clamscan behind a script that records who runs it and what it holds open."""
    # Plain commands with their own redirections: the shell keeps no copies of its
    # descriptors around them, so the listing is what clamscan inherits (plus the script).
    return _script("clamscan-wrapper", """#!/bin/sh
out=%s/ids.$$
id -u > "$out.uid"
echo "$*" > "$out.args"
ls -l /proc/$$/fd/ > "$out.fds"
cat "$out.uid" "$out.args" "$out.fds" > "$out.tmp"
rm -f "$out.uid" "$out.args" "$out.fds"
mv "$out.tmp" "$out"
exec /usr/bin/clamscan "$@"
""" % rec)


def _records(rec, prefix):
    res = []
    for n in sorted(os.listdir(rec)):
        # Finished records only: ids.<pid> and probe.<pid>.json, never a .tmp.
        if re.fullmatch(re.escape(prefix) + r"[0-9]+(\.json)?", n):
            with open(os.path.join(rec, n)) as f:
                res.append(f.read())
    return res


def _pipeline(scanners, scanner_user=SCAN_USER, **kw):
    """spoold as root, user nobody, scanner_user (or none); started by the caller."""
    extra = 'user = "nobody";\n'
    if scanner_user:
        extra += 'scanner_user = "%s";\n' % scanner_user
    p = Pipeline(scanners=scanners, extra=extra, **kw)
    # The stages run as nobody and the scanners as daemon: the config, the signatures,
    # the scripts and the spool's parents must be reachable for them.
    for d in (harness._base(), os.path.dirname(p.dir), p.dir,
              os.path.dirname(harness.sigdir())):
        os.chmod(d, 0o755)
    os.chmod(p.conf, 0o644)
    return p


def _wrapped_clamscan(rec, name, mode):
    argv = clamscan()["argv"]
    argv[0] = _wrapper(rec)
    argv[-1] = "{file}" if mode == "per-attachment" else "{files}"
    return clamscan(name=name, mode=mode, argv=argv)


def _broker_pid(p, uid):
    """The child of spoold that runs as uid: the broker."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                st = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if int(st["PPid"]) == p.proc.pid and int(st["Uid"].split()[0]) == uid:
            return int(d)
    return None


def _only_part_fds(record, spool):
    """The descriptors a scanner process held: besides stdio, only parts of the spool
    (by their inode's name), never a spool directory, a socket or another file."""
    bad = []
    fds = dict((int(line.partition(" -> ")[0].split()[-1]), line.partition(" -> ")[2])
               for line in record.splitlines() if " -> " in line)
    for line in record.splitlines():
        if " -> " not in line:
            continue
        left, _, target = line.partition(" -> ")
        num = int(left.split()[-1])
        if num <= 2:
            continue
        if target.startswith(spool + "/scan/") and target.endswith(".ATT"):
            continue
        if target.startswith(spool + "/tmp/canary."):  # the canary's test files
            continue
        if num == 10 and target.endswith("/clamscan-wrapper"):  # the shell's script
            continue
        if target == fds.get(2) and target.startswith("pipe:"):  # the shell's copy of stderr
            continue
        bad.append(line)
    return bad


@test
def scanners_run_as_scanner_user_per_part_and_per_message():
    nobody, scan = _users()
    rec = _rec_dir()
    p = _pipeline([_wrapped_clamscan(rec, "pp", "per-attachment"),
                   _wrapped_clamscan(rec, "pm", "per-message")])
    p.start()
    clean = msgs.with_attachment(b"hello world\n" * 10)
    p.drop("c", clean)
    p.drop("e", msgs.eicar_attachment())
    finals = p.wait_final(2)
    places = sorted(pl for pl, _, _ in finals)
    assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-3000:])
    (_, q, path), = [f for f in finals if f[0] == "quarantine"]
    verdicts = p.read(path, "verdicts").decode()
    for name in ("pp", "pm"):
        assert any(("scanner=%s" % name) in line and "infected" in line
                   for line in verdicts.splitlines()), (name, verdicts)
    assert "runs the scanners as %s" % SCAN_USER in p.logtext(), p.logtext()[-2000:]
    recs = _records(rec, "ids.")
    # The canary's runs and the messages' runs, both modes: all as the scanner user.
    assert len(recs) >= 4, recs
    for r in recs:
        assert r.startswith("%d\n" % scan.pw_uid), r
        args = r.splitlines()[1]
        assert "/dev/fd/3" in args and p.spool not in args, r
        bad = _only_part_fds(r, p.spool)
        assert not bad, (bad, r)
    # A per-message run over both parts of the clean message got both descriptors.
    assert any("/dev/fd/3 /dev/fd/4" in r for r in recs), recs
    p.stop()


@test
def per_message_run_over_250_parts_names_the_infected_one_by_its_descriptor():
    """More parts than one descriptor batch (200): every part reaches the scanner at its
    own /dev/fd/N, all open at once within rlimit_nofile (256 by default: the handed
    descriptors come on top), and the infected one, past the first batch, is named by
    that word."""
    nobody, scan = _users()
    rec = _rec_dir()
    p = _pipeline([_wrapped_clamscan(rec, "pm", "per-message")])
    p.start()
    common, crlf = msgs._split_common({"subject": "250 parts"})
    atts = [("this is part %d\n" % i, "part-%d.txt" % i, "text/plain") for i in range(2, 251)]
    atts[230] = (msgs.eicar(), "eicar.com", "application/octet-stream")
    p.drop("big", msgs._bytes(msgs._mixed("part 1\n", atts, common), crlf))
    (place, q, path), = p.wait_final(1, timeout=120)
    verdicts = p.read(path, "verdicts").decode()
    lines = [line for line in verdicts.splitlines() if line.startswith("scan part=")]
    infected = [line for line in lines if " verdict=infected" in line]
    assert place == "quarantine", (place, verdicts[-3000:])
    assert len(lines) >= 250, len(lines)
    # Named, not guessed: no part is an error (an infected run naming none of its
    # parts, or a part it did not name in the last round, would be).
    assert not [line for line in lines if " verdict=error" in line], verdicts[-3000:]
    assert infected and all("virus=Spoold.Test" in line or "virus=Eicar" in line
                            for line in infected), infected
    # The runs went through the broker, as the scanner user, with descriptors past the
    # first batch of 200.
    recs = [r for r in _records(rec, "ids.") if "/dev/fd/252" in r]
    assert recs and all(r.startswith("%d\n" % scan.pw_uid) for r in recs), recs
    p.stop()


PROBE = r'''#!/usr/bin/python3
import errno, json, os, socket, sys
rec = %(rec)r
res = {"uid": os.getuid(), "own": {}, "own_write": {}, "tries": {}}
def attempt(name, fn):
    try:
        fn()
        res["tries"][name] = "ok"
    except OSError as e:
        res["tries"][name] = errno.errorcode.get(e.errno, str(e.errno))
for a in sys.argv[1:]:
    try:
        with open(a, "rb") as f:
            res["own"][a] = len(f.read())
    except OSError as e:
        res["own"][a] = "errno:" + errno.errorcode.get(e.errno, str(e.errno))
    try:
        os.close(os.open(a, os.O_WRONLY))
        res["own_write"][a] = "ok"
    except OSError as e:
        res["own_write"][a] = errno.errorcode.get(e.errno, str(e.errno))
    if a.startswith("/dev/fd/"):
        attempt("write_fd_" + a[8:], lambda a=a: os.write(int(a[8:]), b"x"))
        # The part's own path in the spool (the kernel tells us): not by that way.
        real = os.readlink("/proc/self/fd/" + a[8:])
        res.setdefault("real", []).append(real)
        attempt("by_path_" + a[8:], lambda p=real: open(p, "rb").read())
        attempt("sibling_" + a[8:], lambda p=os.path.dirname(real) + "/manifest": open(p, "rb").read())
try:
    with open(rec + "/targets.json") as f:
        targets = json.load(f)
except FileNotFoundError:
    targets = None
for name, path in (targets or {}).get("read", {}).items():
    attempt(name, lambda p=path: open(p, "rb").read())
for name, path in (targets or {}).get("create", {}).items():
    attempt(name, lambda p=path: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
for name, path in (targets or {}).get("list", {}).items():
    attempt(name, lambda p=path: os.listdir(p))
for name, path in (targets or {}).get("connect", {}).items():
    def conn(p=path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(p)
        finally:
            s.close()
    attempt(name, conn)
res["targets"] = targets is not None
out = "%%s/probe.%%d.json" %% (rec, os.getpid())
with open(out + ".tmp", "w") as f:
    json.dump(res, f)
os.rename(out + ".tmp", out)
sys.exit(0)
'''


@test
def scanner_reads_its_own_parts_and_nothing_else_of_the_spool():
    nobody, scan = _users()
    rec = _rec_dir()
    probe = _script("probe", PROBE % {"rec": rec})
    p = _pipeline([clamscan(),
                   dict(name="probe", type="exec", mode="per-message",
                        argv=[probe, "{files}"], clean_codes=[0], infected_codes=[1],
                        virus_regex="^(.+): (.+) FOUND$",
                        timeout=30, max_concurrent=2, canary=False)])
    p.start()
    # Another message, kept in quarantine/: its part, message and verdicts are targets.
    p.drop("e", msgs.eicar_attachment())
    (place, q, qpath), = p.wait_final(1)
    assert place == "quarantine", place
    s = p.spool
    targets = {
        "read": {"other_message": os.path.join(qpath, "message"),
                 "other_verdicts": os.path.join(qpath, "verdicts"),
                 "status": os.path.join(s, "run", "status")},
        "create": {"create_scan": os.path.join(s, "scan", "probe"),
                   "create_tmp": os.path.join(s, "tmp", "probe"),
                   "create_inbound": os.path.join(s, "inbound", "probe"),
                   "create_root": os.path.join(s, "probe")},
        "list": {"list_root": s, "list_scan": os.path.join(s, "scan")},
        "connect": {"control": os.path.join(s, "run", "control")},
    }
    with open(os.path.join(rec, "targets.json"), "w") as f:
        json.dump(targets, f)
    os.chmod(os.path.join(rec, "targets.json"), 0o644)
    body = b"hello world\n" * 10
    p.drop("c", msgs.with_attachment(body))
    wait_for(lambda: len(p.finals()) >= 2 and p.in_flight() == 0, timeout=60,
             what="the clean message\n" + p.logtext()[-3000:])
    assert sorted(pl for pl, _, _ in p.finals()) == ["outbox/smtp", "quarantine"]
    runs = [json.loads(r) for r in _records(rec, "probe.")]
    runs = [r for r in runs if r["targets"]]
    assert len(runs) == 1, runs
    r = runs[0]
    assert r["uid"] == scan.pw_uid, r
    # Its own parts (the text, the attachment, the raw message): all readable, through
    # their descriptors, and the attachment whole.
    n = len(r["real"])
    fdn = [str(3 + i) for i in range(n)]
    assert n >= 2 and sorted(r["own"]) == sorted("/dev/fd/" + k for k in fdn), r
    assert all(isinstance(v, int) for v in r["own"].values()), r
    assert len(body) in r["own"].values(), r
    # Their real paths were parts in scan/: the descriptors were the message's parts.
    assert all(x.startswith(s + "/scan/") and x.endswith(".ATT") for x in r["real"]), r
    # ...but not writable, neither by reopening nor through the descriptor itself.
    assert set(r["own_write"].values()) == {"EACCES"}, r
    t = r["tries"]
    for k in fdn:
        assert t.pop("write_fd_" + k) == "EBADF", (k, t)
    # Nothing else of the spool: not another message, not run/, and no file anywhere.
    assert t == {k: "EACCES" for k in t}, t
    assert set(t) == {"by_path_" + k for k in fdn} | {"sibling_" + k for k in fdn} | {
                      "other_message", "other_verdicts", "status",
                      "create_scan", "create_tmp", "create_inbound", "create_root",
                      "list_root", "list_scan", "control"}, t
    for d in ("scan", "tmp", "inbound"):
        assert "probe" not in os.listdir(os.path.join(s, d)), d
    p.stop()


@test
def broker_killed_spoold_exits_75_nothing_delivered_unscanned():
    nobody, scan = _users()
    p = _pipeline([clamscan()])
    p.start()
    pid = None
    wait_for(lambda: _broker_pid(p, scan.pw_uid) is not None, timeout=10,
             what="the scanner broker")
    pid = _broker_pid(p, scan.pw_uid)
    sent = [msgs.eicar_attachment(), msgs.with_attachment(b"clean attachment\n" * 5),
            msgs.eicar_inline_text(), msgs.clean()]
    for i, m in enumerate(sent):
        p.drop("m%d" % i, m)
    time.sleep(0.3)  # some of them are being scanned
    os.kill(pid, signal.SIGKILL)
    rc = p.proc.wait(timeout=40)
    assert rc == 75, (rc, p.logtext()[-2000:])
    assert "the scanner broker (pid %d) died" % pid in p.logtext(), p.logtext()[-2000:]
    # spoold stopped its stages before it went: nothing runs on without it.
    wait_for(lambda: not p.pids_using_conf(), timeout=15, what="the stages to stop")
    # What was delivered before the kill was scanned (the invariant after the test
    # rescans it); the rest is scanned after the restart, by a new broker.
    p.start_again()
    p.wait_final(len(sent), timeout=90)
    places = sorted(pl for pl, _, _ in p.finals())
    assert places == ["outbox/smtp", "outbox/smtp", "quarantine", "quarantine"], \
        (places, p.logtext()[-3000:])
    p.stop()


@test
def without_scanner_user_scanners_run_as_the_runner():
    nobody, scan = _users()
    rec = _rec_dir()
    p = _pipeline([_wrapped_clamscan(rec, "pp", "per-attachment")], scanner_user=None)
    p.start()
    p.drop("c", msgs.clean())
    (place, _, _), = p.wait_final(1)
    assert place == "outbox/smtp", place
    recs = _records(rec, "ids.")
    assert recs and all(r.startswith("%d\n" % nobody.pw_uid) for r in recs), recs
    assert all(p.spool + "/scan/" in r or p.spool + "/tmp/" in r for r in recs), recs
    assert "scanner broker" not in p.logtext()
    p.stop()


@test
def scanner_user_that_is_the_spool_user_is_a_config_error():
    nobody, scan = _users()
    p = _pipeline([clamscan()], scanner_user="nobody")
    logf = open(p.log, "ab")
    import subprocess
    r = subprocess.run([harness.bin_path("spoold"), "-c", p.conf], stdout=logf, stderr=logf,
                       stdin=subprocess.DEVNULL, timeout=30)
    logf.close()
    assert r.returncode == 78, (r.returncode, p.logtext()[-1500:])
    assert "scanner_user \"nobody\" is the spool's own user" in p.logtext(), p.logtext()


if __name__ == "__main__":
    harness.main()
