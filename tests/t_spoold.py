#!/usr/bin/env python3
"""spoold: supervision, readiness, per-stage control, SIGHUP, metrics file, privileges,
systemd units. Real binaries on a real spool (tests/lib/spool.py)."""
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, skip, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402

STAGES = ("splitter", "scanner-runner", "router")


def started(**kw):
    kw.setdefault("scanners", [fake("av")])
    # fake av passes the canary at start; no periodic canary runs (less load).
    kw["extra"] = "canary_interval = 0;\n" + kw.get("extra", "")
    p = Pipeline(**kw).start()
    wait_ready(p)
    return p


def wait_ready(p, n=3):
    """Until n stage instances run and said they are ready; returns status lines."""
    def ok():
        st = status_lines(p)
        good = [s for s in st if s["state"] == "running" and s.get("ready") == "1"]
        return st if len(good) >= n else None
    return wait_for(ok, timeout=30, what="%d ready stages:\n%s" % (n, p.logtext()[-2000:]))


def status_lines(p):
    res = []
    try:
        with open(os.path.join(p.spool, "run", "status")) as f:
            for line in f:
                if line.startswith("stage "):
                    kv = dict(t.split("=", 1) for t in line.split()[1:])
                    kv["pid"] = int(kv["pid"])
                    res.append(kv)
    except FileNotFoundError:
        pass
    return res


def pids(p, stage=None):
    return sorted(s["pid"] for s in status_lines(p)
                  if s["state"] == "running" and (stage is None or s["name"] == stage))


def by_stage(p):
    return {n: pids(p, n) for n in STAGES}


@test
def stop_after_mail_is_prompt_and_kills_no_stage():
    """SIGTERM stops every stage by itself, also after each has handled mail (the watcher
    thread of a stage that had seen an inotify event once blocked in libinotifytools'
    select() for good, and every stop waited 10 s for spoold's SIGKILL)."""
    p = started()
    p.drop("one", msgs.clean())
    p.wait_final(1)
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    rc = p.proc.wait(timeout=30)
    took = time.monotonic() - t0
    log = p.logtext()
    assert rc == 0 and "did not stop" not in log and "SIGKILL" not in log, (rc, log[-2000:])
    assert took < 5, "stopping took %.1f s\n%s" % (took, log[-2000:])
    for name in STAGES:
        assert re.search(r"%s\[0\] stopped \(exit 0\)" % re.escape(name), log), \
            "%s did not exit by itself\n%s" % (name, log[-2000:])


@test
def readiness_is_reported_per_instance():
    p = started(runner=dict(instances=2))
    st = wait_ready(p, 4)
    assert len([s for s in st if s["name"] == "scanner-runner"]) == 2, st
    j = __import__("json").loads(p.ctl("status", "--json").out)
    assert all(s["ready"] for s in j["stages"]), j["stages"]
    assert re.search(r"scanner-runner\[1\] ready pid=\d+", p.logtext()), p.logtext()[-2000:]


@test
def kill_9_stage_is_restarted_within_2s():
    p = started()
    old = pids(p, "splitter")
    assert len(old) == 1, status_lines(p)
    others = {n: pids(p, n) for n in ("scanner-runner", "router")}
    t0 = time.monotonic()
    os.kill(old[0], signal.SIGKILL)
    new = wait_for(lambda: (lambda x: x if x and x != old else None)(pids(p, "splitter")),
                   timeout=20, what="a new splitter pid")
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, "restart took %.2fs" % elapsed
    assert new != old
    assert {n: pids(p, n) for n in ("scanner-runner", "router")} == others
    st = [s for s in status_lines(p) if s["name"] == "splitter"][0]
    assert st["restarts"] == "1", st
    # The restarted stage works.
    p.drop("after", msgs.clean())
    p.wait_final(1)


@test
def five_deaths_in_a_minute_mark_failed_until_started():
    p = started()
    for death in range(5):
        old = wait_for(lambda: pids(p, "router"), timeout=30, what="router running")
        os.kill(old[0], signal.SIGKILL)
        if death < 4:  # back-off 1, 2, 4, 8 s
            wait_for(lambda: (lambda x: x and x != old)(pids(p, "router")), timeout=30,
                     what="router restart %d" % (death + 1))
    wait_for(lambda: [s for s in status_lines(p) if s["name"] == "router"
                      and s["state"] == "failed"], timeout=20, what="router failed")
    assert "marked FAILED" in p.logtext()
    time.sleep(1.5)
    assert pids(p, "router") == [], "a failed stage was restarted"
    j = __import__("json").loads(p.ctl("status", "--json").out)
    assert [s["state"] for s in j["stages"] if s["name"] == "router"] == ["failed"], j
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    assert pids(p, "router"), status_lines(p)
    p.drop("m", msgs.clean())
    p.wait_final(1)
    assert len(p.outbox()) == 1, p.finals()


@test
def restart_stage_replaces_only_its_pids():
    p = started()
    before = by_stage(p)
    r = p.ctl("restart", "router")
    assert r.returncode == 0, r.out
    after = wait_for(lambda: (lambda b: b if b["router"] else None)(by_stage(p)), timeout=20,
                     what="router running again")
    assert after["router"] != before["router"], (before, after)
    assert after["splitter"] == before["splitter"], (before, after)
    assert after["scanner-runner"] == before["scanner-runner"], (before, after)
    # A requested restart is not a death.
    st = [s for s in status_lines(p) if s["name"] == "router"][0]
    assert st["restarts"] == "0", st


@test
def pause_stops_claiming_and_resume_continues():
    p = started()
    r = p.ctl("pause", "splitter")
    assert r.returncode == 0, r.out
    wait_for(lambda: all(s["paused"] == "1" for s in status_lines(p) if s["name"] == "splitter"),
             timeout=10, what="splitter shown paused")
    time.sleep(0.3)  # the signal is asynchronous
    p.drop("paused", msgs.clean())
    time.sleep(2.5)
    assert p.entries("inbound") == ["paused"], "a paused splitter claimed: %s" % p.finals()
    assert p.finals() == []
    r = p.ctl("resume", "splitter")
    assert r.returncode == 0, r.out
    p.wait_final(1)
    assert len(p.outbox()) == 1, p.finals()


@test
def paused_stage_restarted_by_spoold_stays_paused():
    p = started()
    assert p.ctl("pause", "router").returncode == 0
    old = pids(p, "router")
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: (lambda x: x and x != old)(pids(p, "router")), timeout=20,
             what="router restarted")
    wait_ready(p)
    p.drop("m", msgs.clean())
    wait_for(lambda: p.entries("route"), timeout=30, what="message waiting in route/")
    time.sleep(2)
    assert p.entries("route") and not p.outbox(), "a paused router worked"
    assert p.ctl("resume", "router").returncode == 0
    p.wait_final(1)


@test
def sighup_with_broken_config_keeps_the_old_one():
    p = started()
    before = by_stage(p)
    with open(p.conf) as f:
        good = f.read()
    with open(p.conf, "w") as f:
        f.write(good + "\nthis is = not ( valid\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new config rejected" in p.logtext(), timeout=20,
             what="the rejection in the log")
    assert "old one stays in force" in p.logtext()
    time.sleep(0.5)
    assert by_stage(p) == before, (before, by_stage(p))
    assert p.proc.poll() is None, "spoold exited"
    with open(p.conf, "w") as f:
        f.write(good)
    p.drop("m", msgs.clean())
    p.wait_final(1)


@test
def sighup_restarts_only_stages_whose_settings_changed():
    p = started()
    before = by_stage(p)
    with open(p.conf) as f:
        text = f.read()
    assert "hold_retry_min = 3600;" in text
    with open(p.conf, "w") as f:
        f.write(text.replace("hold_retry_min = 3600;", "hold_retry_min = 1800;"))
    p.proc.send_signal(signal.SIGHUP)
    after = wait_for(lambda: (lambda b: b if b["router"] and b["router"] != before["router"]
                              else None)(by_stage(p)), timeout=30, what="router restarted")
    assert after["splitter"] == before["splitter"], (before, after)
    assert after["scanner-runner"] == before["scanner-runner"], (before, after)
    assert "restarting router" in p.logtext(), p.logtext()[-2000:]
    # An unchanged config restarts nothing.
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "no stage settings changed" in p.logtext(), timeout=20, what="reload log")
    time.sleep(0.5)
    assert by_stage(p) == after


@test
def stop_state_survives_spoold_restart():
    p = started()
    r = p.ctl("stop", "router")
    assert r.returncode == 0, r.out
    st = [s for s in status_lines(p) if s["name"] == "router"]
    assert st and all(s["state"] == "stopped" and s["pid"] == 0 for s in st), st
    assert os.path.exists(os.path.join(p.spool, "run", "down", "router"))
    p.stop()
    p.start()
    wait_ready(p, 2)
    time.sleep(1)
    st = [s for s in status_lines(p) if s["name"] == "router"]
    assert st and all(s["state"] == "stopped" for s in st), st
    assert "stays stopped" in p.logtext()
    p.drop("m", msgs.clean())
    wait_for(lambda: p.entries("route"), timeout=30, what="message waiting in route/")
    assert not p.outbox()
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    assert pids(p, "router"), status_lines(p)
    assert not os.path.exists(os.path.join(p.spool, "run", "down", "router"))
    p.wait_final(1)


@test
def control_without_spoold_fails_clearly():
    p = Pipeline(scanners=[fake("av")], extra="canary_interval = 0;\n")
    os.makedirs(p.spool, exist_ok=True)
    r = p.ctl("restart", "router")
    assert r.returncode == 69, (r.returncode, r.out)
    assert "spoold is not running" in r.out, r.out
    p2 = started()
    r = p2.ctl("restart", "nosuchstage")
    assert r.returncode == 1 and "unknown stage" in r.out, (r.returncode, r.out)
    sock = os.path.join(p2.spool, "run", "control")
    assert (os.stat(sock).st_mode & 0o777) == 0o600, oct(os.stat(sock).st_mode)


@test
def control_group_opens_the_socket_to_the_group():
    import grp
    try:
        g = grp.getgrnam("nogroup")
    except KeyError:
        skip("no group nogroup")
    p = started(extra='control_group = "nogroup";\n')
    st = os.stat(os.path.join(p.spool, "run", "control"))
    assert (st.st_mode & 0o777) == 0o660 and st.st_gid == g.gr_gid, (oct(st.st_mode), st.st_gid)
    assert p.ctl("restart", "splitter").returncode == 0
    if os.geteuid() == 0:
        # A member of the group (and of no group of the spool) reaches the socket, and
        # lists nothing on the way.
        import pwd
        import socket
        nobody = pwd.getpwnam("nobody")
        for d in (harness._base(), p.dir):  # the test's own directories: passable
            os.chmod(d, os.stat(d).st_mode | 0o111)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgroups([g.gr_gid])
                os.setgid(g.gr_gid)
                os.setuid(nobody.pw_uid)
                try:
                    os.listdir(p.spool)
                    code = 3
                except PermissionError:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(os.path.join(p.spool, "run", "control"))
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, "control_group member: exit %d" % os.WEXITSTATUS(status)


@test
def sd_notify_ready_after_stages_are_ready():
    import socket
    d = harness.tmpdir("notify")
    path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    os.chmod(path, 0o666)  # as systemd's: spoold sends after it left root
    s.settimeout(30)
    p = Pipeline(scanners=[fake("av")], extra="canary_interval = 0;\n")
    logf = open(p.log, "ab")
    p.proc = subprocess.Popen([harness.bin_path("spoold"), "-c", p.conf], stdout=logf,
                              stderr=logf, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, NOTIFY_SOCKET=path))
    logf.close()
    msg = s.recv(4096).decode()
    assert "READY=1" in msg, msg
    # READY=1 comes only once every stage instance said it is ready.
    st = status_lines(p)
    assert len(st) == 3 and all(x["ready"] == "1" for x in st), st
    p.proc.send_signal(signal.SIGHUP)
    msgs_seen = [s.recv(4096).decode(), s.recv(4096).decode()]
    assert "RELOADING=1" in msgs_seen[0] and "READY=1" in msgs_seen[1], msgs_seen
    p.stop()
    assert "STOPPING=1" in s.recv(4096).decode()
    s.close()


# ---- metrics ------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_prom(text):
    """A strict little parser of the Prometheus text format: returns
    {family: {"type": t, "samples": [(name, {labels}, value)]}}; raises on anything
    malformed (sample before its TYPE, a family split in two, bad labels or value,
    histogram buckets not cumulative or +Inf != _count)."""
    fams, cur, seen_done = {}, None, set()
    assert text.endswith("\n"), "no final newline"
    for ln, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in fams, "line %d: family %s declared twice" % (ln, name)
            if cur:
                seen_done.add(cur)
            fams[name] = {"type": typ, "samples": []}
            cur = name
            continue
        assert not line.startswith("#") and line.strip(), "line %d: %r" % (ln, line)
        m = SAMPLE.match(line)
        assert m, "line %d: not a sample: %r" % (ln, line)
        name, labels, value = m.group(1), {}, float(m.group(4))
        if m.group(3):
            rest = m.group(3)
            while rest:
                lm = LABEL.match(rest)
                assert lm, "line %d: bad labels %r" % (ln, m.group(3))
                labels[lm.group(1)] = lm.group(2)
                rest = rest[lm.end():]
        fam = name
        if cur and fams[cur]["type"] == "histogram":
            for suf in ("_bucket", "_sum", "_count"):
                if name == cur + suf:
                    fam = cur
        assert fam == cur, "line %d: sample %s outside its family (TYPE %s)" % (ln, name, cur)
        fams[cur]["samples"].append((name, labels, value))
    for fam, f in fams.items():
        if f["type"] != "histogram":
            continue
        series = {}
        for name, labels, value in f["samples"]:
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            series.setdefault(key, {"b": [], "count": None})
            if name.endswith("_bucket"):
                series[key]["b"].append((float(labels["le"]), value))
            elif name.endswith("_count"):
                series[key]["count"] = value
        for key, s in series.items():
            b = sorted(s["b"])
            assert b and b[-1][0] == float("inf"), "%s%s: no +Inf bucket" % (fam, key)
            assert all(b[i][1] <= b[i + 1][1] for i in range(len(b) - 1)), \
                "%s%s: buckets not cumulative" % (fam, key)
            assert b[-1][1] == s["count"], "%s%s: +Inf != _count" % (fam, key)
    return fams


def sample(fams, fam, name=None, **labels):
    for n, l, v in fams.get(fam, {"samples": []})["samples"]:
        if (name is None or n == name) and all(l.get(k) == x for k, x in labels.items()):
            return v
    return None


@test
def parser_rejects_malformed_prometheus_text():
    for bad in ('x 1\n', '# TYPE x counter\nx{a="1} 2\n', '# TYPE x counter\nx one\n',
                '# TYPE x counter\nx 1\n# TYPE y gauge\ny 1\nx 2\n'):
        try:
            parse_prom(bad)
        except (AssertionError, ValueError):
            continue
        raise AssertionError("accepted %r" % bad)


@test
def metrics_file_is_valid_prometheus_text():
    p = started(extra="metrics = { interval = 1; };\n")
    mf = os.path.join(p.spool, "run", "metrics.prom")
    p.drop("a", msgs.clean())
    p.drop("b", msgs.with_attachment(b"hello world\n" * 10))
    p.wait_final(2)

    def ready():
        try:
            with open(mf) as f:
                fams = parse_prom(f.read())
        except FileNotFoundError:
            return None
        if sample(fams, "spoold_queue_messages", queue="outbox/smtp") != 2:
            return None
        if not sample(fams, "spoold_parts_scanned_total", verdict="clean"):
            return None
        return fams
    fams = wait_for(ready, timeout=30, what="metrics with 2 delivered messages")
    assert fams["spoold_queue_messages"]["type"] == "gauge"
    assert sample(fams, "spoold_queue_messages", queue="inbound") == 0
    assert sample(fams, "spoold_queue_oldest_age_seconds", queue="outbox/smtp") is not None
    assert sample(fams, "spoold_queue_bytes", queue="outbox/smtp") > 0
    assert fams["spoold_parts_scanned_total"]["type"] == "counter"
    assert sample(fams, "spoold_scanner_slots_busy", scanner="av") == 0
    assert sample(fams, "spoold_scanner_slots_max", scanner="av") == 2
    assert sample(fams, "spoold_stage_restarts_total", stage="splitter") == 0
    if "spoold_scan_seconds" in fams:
        assert fams["spoold_scan_seconds"]["type"] == "histogram"
    # Counters survive a stage's death: the dead pid's file is folded, not lost.
    parts = sample(fams, "spoold_parts_scanned_total", verdict="clean")
    os.kill(pids(p, "scanner-runner")[0], signal.SIGKILL)

    def folded():
        with open(mf) as f:
            fams2 = parse_prom(f.read())
        return fams2 if sample(fams2, "spoold_stage_restarts_total",
                               stage="scanner-runner") == 1 else None
    fams2 = wait_for(folded, timeout=30, what="restart counted in the metrics file")
    assert sample(fams2, "spoold_parts_scanned_total", verdict="clean") == parts, \
        "counter went backwards after the runner died"


# ---- privileges and system integration ------------------------------------------------

@test
def drops_privileges_to_the_configured_user():
    if os.geteuid() != 0:
        skip("needs root to test the privilege drop")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        skip("no user nobody")
    # The user must be able to reach the binaries, the fake scanner and the spool: the
    # harness makes its temp base 0700; open it for traversal only.
    os.chmod(harness._base(), 0o711)
    probe = subprocess.run(["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                            "--clear-groups", "test", "-x", harness.bin_path("splitter"),
                            "-a", "-x", os.path.join(harness.FAKE, "clean"),
                            "-a", "-x", harness.tmpdir("probe")], capture_output=True)
    if probe.returncode != 0:
        skip("user nobody cannot reach the build or the temp directory")
    p = started(extra='user = "nobody";\n')
    st = os.stat(p.spool)
    assert st.st_uid == pw.pw_uid, "spool owned by uid %d" % st.st_uid
    assert (st.st_mode & 0o777) == 0o750, oct(st.st_mode)
    for pid in pids(p) + [p.proc.pid]:
        with open("/proc/%d/status" % pid) as f:
            uid = [l for l in f if l.startswith("Uid:")][0].split()[1:]
        assert all(int(u) == pw.pw_uid for u in uid), (pid, uid)
    sock = os.stat(os.path.join(p.spool, "run", "control"))
    assert sock.st_uid == pw.pw_uid and (sock.st_mode & 0o777) == 0o600, sock
    # Dropped as the spool's user (as `spoolctl inject` run by it would). A file owned by
    # someone else cannot be hard-linked by the router under fs.protected_hardlinks:
    # reported to the router's owner.
    tmp = os.path.join(p.spool, "inbound", ".m.tmp")
    with open(tmp, "wb") as f:
        f.write(msgs.clean())
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.rename(tmp, os.path.join(p.spool, "inbound", "m"))
    (place, q, path), = p.wait_final(1)
    assert place == "outbox/smtp", place
    # "message" keeps the mode its dropper gave it; every file the pipeline made is 0640.
    for name in set(os.listdir(path)) - {"message"}:
        m = os.stat(os.path.join(path, name)).st_mode & 0o777
        assert m & 0o027 == 0, "%s is %o" % (name, m)


@test
def systemd_units_verify():
    sa = shutil.which("systemd-analyze")
    if not sa:
        skip("systemd-analyze not installed")
    dist = os.path.join(harness.ROOT, "dist")
    d = harness.tmpdir("units")
    # verify wants the ExecStart binaries to exist: point them at the built ones.
    for unit in ("spoold.service", "spoold-stage@.service"):
        with open(os.path.join(dist, unit)) as f:
            text = f.read()
        text = text.replace("/usr/sbin/spoold", harness.bin_path("spoold"))
        text = text.replace("/usr/libexec/spoold", harness.BIN)
        with open(os.path.join(d, unit), "w") as f:
            f.write(text)
    os.symlink(os.path.join(d, "spoold-stage@.service"), os.path.join(d, "spoold-stage@router.service"))
    # verify also checks that Documentation= man pages exist: give it ours.
    man = os.path.join(d, "man")
    for sec in ("5", "8"):
        os.makedirs(os.path.join(man, "man" + sec))
    for page in ("spoold.8", "spoolctl.8", "spoold.conf.5"):
        shutil.copy(os.path.join(harness.ROOT, "docs", "man", page),
                    os.path.join(man, "man" + page[-1], page))
    env = dict(os.environ, MANPATH=man)
    r = harness.run([sa, "verify", os.path.join(d, "spoold.service"),
                     os.path.join(d, "spoold-stage@router.service")], timeout=60, env=env)
    if r.returncode != 0 and ("Failed to" in r.out and "bus" in r.out.lower()):
        skip("systemd-analyze cannot run here: %s" % r.out.strip()[-200:])
    bad = [l for l in r.out.splitlines() if "spoold" in l and "Unknown" in l or "Invalid" in l
           or "Failed to parse" in l or "bad-setting" in l]
    assert r.returncode == 0 and not bad, r.out
    with open(os.path.join(dist, "spoold.tmpfiles")) as f:
        lines = [l.split() for l in f if l.strip() and not l.startswith("#")]
    assert any(l[0] == "d" and l[1] == "/var/spool/spoold" and l[2] == "0750" for l in lines), lines


if __name__ == "__main__":
    harness.main()
