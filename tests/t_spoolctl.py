#!/usr/bin/env python3
"""spoolctl: status, ls, show, requeue, delete, hold on a spool the test seeds (and on a
running pipeline where the point is to race with it)."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402

_counter = [0]


def qid(age_s=0):
    """A valid queue ID whose intake time is age_s seconds ago."""
    _counter[0] += 1
    us = int((time.time() - age_s) * 1e6)
    return "%014x-%06x-%04x" % (us, 0xabcdef, _counter[0])


def pipeline(**kw):
    kw.setdefault("scanners", [fake("av")])
    kw["extra"] = "canary_interval = 0;\n" + kw.get("extra", "")
    p = Pipeline(**kw)
    r = p.ctl("status")  # makes nothing: the spool must exist first
    # (The separated pass makes the spool as tmpfiles.d does: it exists, spoold is down.)
    assert r.returncode == (3 if p.separated else 75), (r.returncode, r.out)
    p.stage("splitter")  # one --once pass creates the spool directories
    return p


def seed(p, state, age_s=0, files=None, sender="s@example.com", rcpts=("r@example.org",)):
    """An entry in state/ with an envelope and the given files {name: bytes}."""
    q = qid(age_s)
    d = os.path.join(p.spool, state, q)
    os.makedirs(d)
    files = dict(files or {})
    files.setdefault("envelope", msgs.envelope(sender, list(rcpts)))
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    # Entries are the splitter's directories; outbox ones are the router's copies; each
    # control file is its writer's (docs/INTERNALS.md).
    p.hand_made(d, "router" if state.startswith("outbox") else "splitter")
    for name, writer in (("verdicts", "scanner-runner"), ("hold", "router"), ("report", "router")):
        if name in files:
            p.hand_made(os.path.join(d, name), writer)
    return q, sum(len(v) for v in files.values())


def ctl_json(p, *args):
    r = p.ctl(*args)
    # status exits 3 while spoold is not running (most tests here run stages one pass
    # at a time), like systemctl status.
    want = 3 if args[:1] == ("status",) and (p.proc is None or p.proc.poll() is not None) else 0
    assert r.returncode == want, (args, r.returncode, r.out)
    return json.loads(r.out)


@test
def status_json_shows_seeded_counts_bytes_ages():
    p = pipeline()
    _, b1 = seed(p, "hold", 100, {"message": b"x" * 1000})
    _, b2 = seed(p, "hold", 10, {"message": b"y" * 500, "hold": b"hold attempts=1\n"})
    _, b3 = seed(p, "badmail", 50, {"message": b"z" * 77, "reason": b"no recipient\n"})
    plain = b"Subject: x\n\nhello\n"
    msgs.drop(os.path.join(p.spool, "inbound"), "plain", plain)
    j = ctl_json(p, "status", "--json")
    q = j["queues"]
    assert q["hold"]["count"] == 2 and q["hold"]["bytes"] == b1 + b2, q["hold"]
    assert 100 <= q["hold"]["oldest_age"] <= 130, q["hold"]
    assert q["badmail"] == {"count": 1, "bytes": b3, "oldest_age": q["badmail"]["oldest_age"]}
    assert 50 <= q["badmail"]["oldest_age"] <= 80, q["badmail"]
    assert q["inbound"]["count"] == 1 and q["inbound"]["bytes"] == len(plain), q["inbound"]
    assert q["scan"] == {"count": 0, "bytes": 0, "oldest_age": -1}, q["scan"]
    assert q["outbox/smtp"]["count"] == 0
    assert j["spoold"]["running"] is False and j["stages"] == [], j
    assert j["hold_expiry_delivers_unscanned"] is False
    (sc,) = j["scanners"]
    assert sc["name"] == "av" and sc["slots_busy"] == 0 and sc["slots_max"] == 2, sc
    assert sc["health"] == "unknown", sc
    # Scanner health as the scanner-runner reports it.
    with open(os.path.join(p.spool, "run", "scanners"), "w") as f:
        f.write("scanner name=av state=degraded since=1700000000 "
                "reason=canary\\x20missed\\x20EICAR\nend\n")
    sc = ctl_json(p, "status", "--json")["scanners"][0]
    assert sc["health"] == "degraded" and sc["reason"] == "canary missed EICAR", sc
    assert sc["since"] == 1700000000, sc
    out = p.ctl("status").out
    assert "health degraded (canary missed EICAR)" in out, out
    # A held slot shows as busy.
    slot = os.path.join(p.spool, "slots", "av.0")
    fd = os.open(slot, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        sc = ctl_json(p, "status", "--json")["scanners"][0]
        assert sc["slots_busy"] == 1, sc
    finally:
        os.close(fd)


@test
def status_is_loud_about_hold_expiry_deliver():
    p = pipeline(router=dict(hold_expiry_action="deliver"))
    out = p.ctl("status").out
    assert out.startswith("WARNING") and "DELIVERED UNSCANNED" in out, out
    assert ctl_json(p, "status", "--json")["hold_expiry_delivers_unscanned"] is True


def fs_journaled(path):
    """What the filesystem of path does with a rename, found independently of the C code:
    ext4 journals only when /proc/fs/jbd2 has an entry for its device."""
    magic = {0xEF53: "ext", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs"}
    out = subprocess.run(["stat", "-f", "-c", "%t", path], stdout=subprocess.PIPE,
                         text=True, check=True).stdout.strip()
    kind = magic.get(int(out, 16))
    if kind != "ext":
        return kind is not None
    st = os.stat(path)
    dev = os.path.basename(os.readlink("/sys/dev/block/%d:%d" % (os.major(st.st_dev),
                                                                os.minor(st.st_dev))))
    try:
        return any(n.startswith(dev + "-") for n in os.listdir("/proc/fs/jbd2"))
    except FileNotFoundError:
        return False


@test
def status_says_whether_renames_are_journaled():
    p = pipeline()
    want = fs_journaled(p.spool)
    assert ctl_json(p, "status", "--json")["renames_journaled"] is want
    out = p.ctl("status").out
    assert ("filesystem: journals renames" if want else
            "filesystem: does not journal renames") in out, out


@test
def ext4_without_a_journal_is_not_taken_for_journaled():
    """ext4 made without a journal (mkfs.ext4 -O ^has_journal) must not be taken for a
    journaling filesystem: a rename there is not one transaction, so a move needs both
    parents fsync'd (lib/spool.c decides this once, in spool_open; spoolctl status shows
    the decision and spoold warns at start). Checked on real loop-mounted images, with and
    without a journal."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        harness.skip("needs root and mkfs.ext4 to loop-mount ext4 images")
    base = harness.tmpdir("ext4")
    seen = {}
    for label, opts in (("nojournal", ["-O", "^has_journal"]), ("journal", [])):
        img, mnt = os.path.join(base, label + ".img"), os.path.join(base, label)
        os.makedirs(mnt)
        with open(img, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F"] + opts + [img], check=True)
        r = subprocess.run(["mount", "-o", "loop", img, mnt], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if r.returncode != 0:
            harness.skip("cannot loop-mount an ext4 image: %s" % r.stdout.decode().strip())
        harness.cleanup(lambda m=mnt: subprocess.run(["umount", "-l", m]))
        p = pipeline(spool=os.path.join(mnt, "spool"))
        seen[label] = ctl_json(p, "status", "--json")["renames_journaled"]
        assert seen[label] is fs_journaled(p.spool), (label, seen[label])
        # spoold says so once at start, so that the administrator knows.
        p.start()
        wait_for(lambda: "started, watching" in p.logtext(), timeout=20, what="the stages")
        p.stop()
        warned = "does not journal renames" in p.logtext()
        assert warned is (label == "nojournal"), (label, p.logtext()[-1500:])
    assert seen == {"nojournal": False, "journal": True}, seen


@test
def status_shows_running_stages():
    p = pipeline()
    p.start()
    def ready():
        j = ctl_json(p, "status", "--json")
        return j if len(j["stages"]) == 3 and all(s["ready"] for s in j["stages"]) else None
    j = wait_for(ready, timeout=30, what="3 ready stages")
    for s in j["stages"]:
        assert s["state"] == "running" and s["pid"] > 0 and s["restarts"] == 0, s
        assert s["paused"] is False and s["uptime"] >= 0, s
    assert p.ctl("pause", "router").returncode == 0
    j = ctl_json(p, "status", "--json")
    assert [s["paused"] for s in j["stages"] if s["name"] == "router"] == [True], j
    assert "PAUSED" in p.ctl("status").out
    assert p.ctl("stop", "splitter").returncode == 0
    j = ctl_json(p, "status", "--json")
    assert [s["state"] for s in j["stages"] if s["name"] == "splitter"] == ["stopped"], j
    assert "STOPPED" in p.ctl("status").out


@test
def ls_json_lists_seeded_entries():
    p = pipeline()
    q1, b1 = seed(p, "hold", 100, {"message": b"x" * 1000, "hold": b"hold attempts=1\n"},
                  sender="alice@example.com", rcpts=["bob@example.org", "carol@example.net"])
    q2, b2 = seed(p, "hold", 5, {"message": b"y" * 10, "manual-hold": b"manual\n"},
                  sender="", rcpts=["dave@example.org"])
    msgs.drop(os.path.join(p.spool, "inbound"), q3 := qid(20),
              msgs.queue_file("eve@example.com", ["frank@example.org"], b"Subject: q\n\nq\n"))
    j = ctl_json(p, "ls", "hold", "--json")
    assert [e["id"] for e in j] == [q1, q2], j
    e1, e2 = j
    assert e1["size"] == b1 and 100 <= e1["age"] <= 130, e1
    assert e1["sender"] == "alice@example.com", e1
    assert e1["recipients"] == ["bob@example.org", "carol@example.net"], e1
    assert e1["state"] == "held" and e2["state"] == "manual-hold", j
    assert e2["sender"] == "" and e2["size"] == b2, e2
    (i,) = ctl_json(p, "ls", "inbound", "--json")
    assert i["id"] == q3 and i["sender"] == "eve@example.com", i
    assert i["recipients"] == ["frank@example.org"] and i["state"] == "dropped", i
    assert ctl_json(p, "ls", "outbox/smtp", "--json") == []
    assert ctl_json(p, "ls", "quarantine", "--json") == []
    # A locked entry is shown as active.
    fd = os.open(os.path.join(p.spool, "hold", q1), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert ctl_json(p, "ls", "hold", "--json")[0]["state"] == "active"
    finally:
        os.close(fd)
    out = p.ctl("ls", "hold").out
    assert q1 in out and "alice@example.com" in out and "bob@example.org" in out, out
    r = p.ctl("ls", "outbox/../../etc")
    assert r.returncode == 64 and "unknown queue" in r.out, (r.returncode, r.out)


@test
def show_lists_every_stage_event_of_a_delivered_message():
    p = pipeline()
    p.start()
    q = p.inject("alice@example.com", ["bob@example.org"],
                 msgs.with_attachment(b"hello\n", filename="hello.txt"))
    p.wait_final(1)
    assert p.outbox() == [("smtp", q)], p.finals()
    r = p.ctl("show", q)
    assert r.returncode == 0, r.out
    assert "location: outbox/smtp" in r.out, r.out
    assert "sender: alice@example.com" in r.out and "recipient: bob@example.org" in r.out
    trace = r.out.split("trace:\n", 1)[1].splitlines()
    stages = [l.split()[2] for l in trace if l.strip()]
    for s in ("splitter", "scanner-runner", "router"):
        assert s in stages, "no %s event in:\n%s" % (s, r.out)
    assert all(l.startswith("  20") for l in trace if l.strip()), "times not readable:\n" + r.out
    r = p.ctl("show", qid())
    assert r.returncode == 1 and "not found" in r.out, r.out
    r = p.ctl("show", "../../etc/passwd")
    assert r.returncode == 64, r.out


@test
def hold_requeue_delete_on_seeded_spool():
    p = pipeline()
    qs, _ = seed(p, "scan", 5, {"message": msgs.clean(), "trace": b""})
    r = p.ctl("hold", qs)
    assert r.returncode == 0, r.out
    d = os.path.join(p.spool, "hold", qs)
    assert os.path.isfile(os.path.join(d, "manual-hold")) and p.entries("scan") == []
    with open(os.path.join(d, "trace")) as f:
        assert "spoolctl hold manual=1 from=scan" in f.read()
    # The router's retry timer leaves a manual hold alone; a due automatic hold is retried.
    qa, _ = seed(p, "hold", 5, {"message": b"m", "hold": b"hold attempts=1 first=1 next=1\n"})
    r = p.stage("router")
    assert p.entries("hold") == [qs] and p.entries("scan") == [qa], \
        (p.entries("hold"), p.entries("scan"), r.out[-2000:])
    r = p.ctl("requeue", qs)
    assert r.returncode == 0, r.out
    assert p.entries("hold") == [] and sorted(p.entries("scan")) == sorted([qs, qa])
    assert not os.path.exists(os.path.join(p.spool, "scan", qs, "manual-hold"))
    # requeue of something already in the pipeline is refused.
    r = p.ctl("requeue", qs)
    assert r.returncode == 1 and "already on its way" in r.out, r.out
    r = p.ctl("delete", qs)
    assert r.returncode == 0, r.out
    assert p.entries("scan") == [qa] and p.entries("trash") == []
    r = p.ctl("delete", qs)
    assert r.returncode == 1 and "not found" in r.out, r.out


@test
def requeue_badmail_goes_back_through_the_splitter():
    p = pipeline()
    m = msgs.clean()
    qb, _ = seed(p, "badmail", 5, {"message": m, "reason": b"test\n"},
                 sender="alice@example.com", rcpts=["bob@example.org"])
    with open(os.path.join(p.spool, "badmail", qb, "trace"), "wb") as f:
        f.write(b"1700000000 splitter intake name=earlier\n")
    p.hand_made(os.path.join(p.spool, "badmail", qb, "trace"), "splitter")
    r = p.ctl("requeue", qb)
    assert r.returncode == 0, r.out
    # The entry itself goes back to the splitter: same queue ID, same trace.
    assert p.entries("badmail") == [] and p.entries("incoming") == [qb], p.finals()
    assert not os.path.exists(os.path.join(p.spool, "incoming", qb, "reason"))
    p.start()
    p.wait_final(1)
    assert p.outbox() == [("smtp", qb)], p.finals()
    tr = p.read(os.path.join(p.spool, "outbox", "smtp", qb), "trace").decode()
    assert "name=earlier" in tr and "requeue from=badmail" in tr, tr


@test
def mutations_never_touch_an_entry_a_stage_holds():
    p = pipeline()
    q, _ = seed(p, "route", 5, {"message": b"m"})
    fd = os.open(os.path.join(p.spool, "route", q), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a stage does while it works on it
        for cmd in ("delete", "hold"):
            r = p.ctl(cmd, q)
            assert r.returncode == 75 and "busy, try again" in r.out, (cmd, r.returncode, r.out)
        assert p.entries("route") == [q]
    finally:
        os.close(fd)
    assert p.ctl("hold", q).returncode == 0
    assert p.entries("hold") == [q]


@test
def mutations_race_safely_with_the_running_pipeline():
    p = pipeline()
    p.start()
    qids = [p.inject("a@example.com", ["b@example.org"], msgs.clean(subject="m%d" % i))
            for i in range(6)]
    held = []
    for q in qids:
        r = p.ctl("hold", q)
        # Each outcome is legal: held, busy (a stage had it), not split yet, or already
        # delivered (refused); never an error, never a duplicate.
        assert r.returncode in (0, 1, 75), (q, r.returncode, r.out)
        if r.returncode == 0:
            held.append(q)
    wait_for(lambda: p.in_flight() == 0, timeout=60, what="pipeline idle")
    places = {}
    for place, q, _ in p.finals():
        places.setdefault(q, []).append(place)
    assert sorted(places) == sorted(qids), places
    assert all(len(v) == 1 for v in places.values()), places
    for q in held:
        assert places[q] == ["hold"], (q, places[q])


if __name__ == "__main__":
    harness.main()
