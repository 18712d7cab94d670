"""Pipeline fixture: a real spool in a temp dir, a generated config, the real binaries.

    p = Pipeline(scanners=[clamscan()])          # writes conf, does not start anything
    p.start()                                    # bin/spoold -c conf (supervises stages)
    qid = p.inject("s@x", ["r@y"], msg)          # spoolctl inject
    p.drop("name", msg)                          # plain drop into inbound/ (tmp + rename)
    p.wait_final(n)                              # until n messages are in final places
    p.finals()                                   # {qid: (place, path)} for every final entry
    p.stop()

Stages can also be run one pass at a time, deterministically: p.stage("splitter", once=True).
"""

import os
import re
import signal
import subprocess
import time

import lib as harness

FINAL = ("quarantine", "hold", "badmail")
ALL_STATES = ("incoming", "scan", "route", "quarantine", "hold", "badmail")


def clamscan(name="clamscan", **kw):
    d = dict(name=name, type="exec", mode="per-attachment",
             argv=["/usr/bin/clamscan", "--no-summary", "--stdout", "--alert-encrypted=yes",
                   "--alert-exceeds-max=yes", "--database=" + harness.sigdir(), "{file}"],
             clean_codes=[0], infected_codes=[1], virus_regex=": (.+) FOUND$",
             version_argv=["/usr/bin/clamscan", "--version"], timeout=60, max_concurrent=2)
    d.update(kw)
    return d


def fake(script, name=None, args=(), **kw):
    d = dict(name=name or script, type="exec", mode="per-attachment",
             argv=[os.path.join(harness.FAKE, script)] + list(args) + ["{file}"],
             clean_codes=[0], infected_codes=[1], virus_regex=": (.+) FOUND$",
             timeout=10, max_concurrent=2)
    d.update(kw)
    return d


def strip_added_headers(data):
    """The message as received: without the header lines the router prepends on delivery
    (X-Virus-Scanned, X-Virus-Scan-Warning), which are the only bytes it may add."""
    while data.startswith((b"X-Virus-Scanned:", b"X-Virus-Scan-Warning:")):
        nl = data.find(b"\n")
        data = data[nl + 1:]
        while data[:1] in (b" ", b"\t"):
            nl = data.find(b"\n")
            data = data[nl + 1:]
    return data


def _val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return "%dL" % v if v > 2147483647 else str(v)
    if isinstance(v, str):
        return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(_val(x) for x in v) + " ]"
    raise TypeError(v)


def _group(d, indent="\t"):
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append("%s%s = {\n%s%s};" % (indent, k, _group(v, indent + "\t"), indent))
        else:
            lines.append("%s%s = %s;" % (indent, k, _val(v)))
    return "\n".join(lines) + "\n"


def read_status(spool):
    """The stage lines of spool/run/status (spoold's view): a dict per instance with name,
    idx, pid, state and restarts; [] before spoold wrote it. Shared with bench/run.py."""
    res = []
    try:
        with open(os.path.join(spool, "run", "status")) as f:
            for line in f:
                if line.startswith("stage "):
                    kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
                    res.append(dict(name=kv.get("name"), idx=int(kv.get("idx", 0)),
                                    pid=int(kv.get("pid", 0)), state=kv.get("state"),
                                    restarts=int(kv.get("restarts", 0))))
    except FileNotFoundError:
        pass
    return res


# Runs argv[1:] as a child and prints its own peak RSS (wait4's rusage: that process
# alone, not the harness's other children) as "maxrss_kb=N", exiting with its status.
MAXRSS_WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "_, st, ru = os.wait4(pid, 0)\n"
    "print('maxrss_kb=%d' % ru.ru_maxrss, flush=True)\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n")


class Pipeline:
    # wrap= for stage(): Debian's python3, which a stage's own user may run (the harness's
    # interpreter may live in root's home).
    MAXRSS = ("/usr/bin/python3", "-c", MAXRSS_WRAPPER)

    def __init__(self, scanners=None, connectors=None, splitter=None, router=None,
                 runner=None, rescan_interval=30, extra="", spool=None, invariant=True):
        """invariant: after the test passes, check that everything in an outbox,
        rescanned whole and re-split, is clean (assert_delivered_clean). A test that
        delivers infected content on purpose (a scanner stand-in that calls everything
        clean) passes the reason as a string instead of True to turn it off."""
        self.dir = harness.tmpdir("p")
        self.spool = spool or os.path.join(self.dir, "spool")
        self.conf = os.path.join(self.dir, "spoold.conf")
        self.log = os.path.join(self.dir, "spoold.log")
        self.proc = None
        self.procs = []
        scanners = scanners if scanners is not None else [clamscan()]
        connectors = connectors or [dict(name="smtp", domains=["*"])]
        text = 'spool_dir = "%s";\nrescan_interval = %d;\n' % (self.spool, rescan_interval)
        text += "allow_root = true;\n"  # the suite runs as root; a test sets user to drop
        text += "log = { level = \"debug\"; };\n"
        if splitter:
            text += "splitter = {\n%s};\n" % _group(splitter)
        if runner:
            text += "scanner_runner = {\n%s};\n" % _group(runner)
        # The X-Virus-Scanned header is on by default in production; tests that compare
        # outbox bytes with what was dropped turn it off (t_router tests the header).
        r = dict(hold_retry_min=3600, hold_retry_max=7200, add_scanned_header=False)
        r.update(router or {})
        text += "router = {\n%s};\n" % _group(r)
        text += "scanners = (\n" + ",\n".join("\t{\n%s\t}" % _group(s, "\t\t") for s in scanners) + "\n);\n"
        text += "connectors = (\n" + ",\n".join("\t{\n%s\t}" % _group(c, "\t\t") for c in connectors) + "\n);\n"
        # SPOOLD_TEST_SEPARATED=1 (run.py's "separated" pass, as root): the same test with
        # each stage as a user of its own, unless the test chose the users itself.
        self.separated = (os.environ.get("SPOOLD_TEST_SEPARATED") == "1" and os.geteuid() == 0
                          and not re.search(r"^\s*(user|[a-z]+_user)\s*=", extra, re.M))
        if self.separated:
            from . import privsep
            privsep.users()
            text += privsep.separated_config()
        # SPOOLD_TEST_SPOOL_SYNC=files (or syncfs, auto): every pipeline of the run makes its
        # steps durable that way, unless the test chose a strategy itself; how the crash
        # and chaos tests are run against a strategy that is not the default.
        sync = os.environ.get("SPOOLD_TEST_SPOOL_SYNC")
        if sync and not re.search(r"^\s*spool_sync\s*=", extra, re.M):
            if sync not in ("syncfs", "files", "auto"):
                raise ValueError("SPOOLD_TEST_SPOOL_SYNC=%r: syncfs, files or auto" % sync)
            text += 'spool_sync = "%s";\n' % sync
        text += extra
        with open(self.conf, "w") as f:
            f.write(text)
        if self.separated:
            privsep.open_paths(self.dir, self.conf)
            # As dist/spoold.tmpfiles makes it in production: the spool's user owns the
            # spool before anything runs (spoolctl may be the first, as that user).
            privsep.prepare_spool(self.spool)
        harness.cleanup(self.stop)
        if invariant is True:
            harness.check_after(self.assert_delivered_clean)
        else:
            assert isinstance(invariant, str) and invariant, \
                "invariant=False needs the reason as a string"

    # ---- processes ---------------------------------------------------------------
    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([harness.bin_path("spoold"), "-c", self.conf],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        harness.wait_for(lambda: os.path.exists(os.path.join(self.spool, "run", "status")),
                         timeout=20, what="spoold to write run/status")
        return self

    def start_again(self):
        """Start a new spoold after the last one died (its lock is free again)."""
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([harness.bin_path("spoold"), "-c", self.conf],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        return self

    def pids_using_conf(self):
        """Every process started with -c <this config> (stages orphaned by a killed spoold)."""
        res = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if self.conf.encode() in argv and int(d) != os.getpid():
                res.append(int(d))
        return res

    def stop_orphans(self):
        for pid in self.pids_using_conf():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []
        self.stop_orphans()

    def stage(self, name, once=True, env=None, timeout=120, args=(), preexec=None, wrap=()):
        """Run one stage; with once=True one recovery + scan pass, returning the result.
        preexec runs in the child before the stage (and before it changes user); wrap is
        a command the stage runs under (after the change of user), e.g. MAXRSS."""
        argv = list(wrap) + [harness.bin_path(name), "-c", self.conf] + list(args)
        e = dict(os.environ)
        e.update(env or {})
        kw = {"preexec_fn": preexec} if preexec else {}
        if self.separated:
            # By hand as its keeper would start it: as the stage's own user.
            from . import privsep
            prefix, umask = privsep.become_stage(name)
            argv = prefix + argv
            kw["preexec_fn"] = (lambda: (preexec(), umask())) if preexec else umask
        if once:
            return harness.run(argv + ["--once"], timeout=timeout, env=e, **kw)
        logf = open(self.log, "ab")
        p = subprocess.Popen(argv, stdout=logf, stderr=logf, env=e, stdin=subprocess.DEVNULL, **kw)
        logf.close()
        self.procs.append(p)
        return p

    @staticmethod
    def maxrss_kb(result):
        """The peak RSS of a stage run with wrap=Pipeline.MAXRSS, from its output."""
        m = re.search(r"^maxrss_kb=(\d+)$", result.out, re.M)
        assert m, "no maxrss line in: %s" % result.out[-2000:]
        return int(m.group(1))

    def pass_all(self, env=None):
        """One deterministic pass of every stage, in pipeline order."""
        out = []
        for s in ("splitter", "scanner-runner", "router"):
            out.append(self.stage(s, env=env))
        return out

    def stage_pids(self):
        st = self.status_file()
        return {(s["name"], s["idx"]): s["pid"] for s in st}

    def status_file(self):
        return read_status(self.spool)

    def logtext(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # ---- input -------------------------------------------------------------------
    def drop(self, name, data):
        inbound = os.path.join(self.spool, "inbound")
        os.makedirs(inbound, exist_ok=True)
        tmp = os.path.join(inbound, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(inbound, name))

    def stage_uid(self, stage):
        """The uid stage runs as: its own user's in the separated pass, else ours."""
        if not self.separated:
            return os.geteuid()
        from . import privsep
        import pwd
        return pwd.getpwnam(privsep.ROLES[privsep.STAGE_ROLE[stage]]).pw_uid

    def hand_made(self, path, stage):
        """A file or directory tree a test wrote by hand (as root) where stage would have
        written it. In the separated pass it is given to that stage's user as the stage
        makes it (directories 2770, files 0640, in the group of the directory above), so
        that the next stage trusts it as the stage's; in the single-user pass, where every
        stage is one user, nothing changes."""
        if not self.separated:
            return
        uid = self.stage_uid(stage)
        gid = os.stat(os.path.dirname(path.rstrip("/"))).st_gid
        todo = [path]
        if os.path.isdir(path):
            for top, dirs, files in os.walk(path):
                todo += [os.path.join(top, n) for n in dirs + files]
        for f in todo:
            os.chown(f, uid, gid, follow_symlinks=False)
            if not os.path.islink(f):
                # (the trace is every stage's to append to: 0660, lib/trace.c)
                os.chmod(f, 0o2770 if os.path.isdir(f) else
                         0o660 if os.path.basename(f) == "trace" else 0o640)

    def ctl(self, *args, stdin=None, timeout=60):
        kw = {}
        if stdin is not None:
            kw["input"] = stdin
            kw["stdin"] = None
        return harness.run([harness.bin_path("spoolctl"), "-c", self.conf] + list(args),
                           timeout=timeout, **kw)

    def inject(self, sender, rcpts, data):
        r = self.ctl("inject", "-f", sender, *rcpts, stdin=data)
        assert r.returncode == 0, "spoolctl inject exited %d: %s" % (r.returncode, r.out)
        return r.out.strip().splitlines()[-1]

    # ---- where things are ----------------------------------------------------------
    def entries(self, state):
        d = os.path.join(self.spool, state)
        try:
            return sorted(n for n in os.listdir(d) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def outbox(self):
        """[(connector, qid)] for every outbox entry."""
        res = []
        ob = os.path.join(self.spool, "outbox")
        for c in sorted(os.listdir(ob)) if os.path.isdir(ob) else []:
            for q in sorted(os.listdir(os.path.join(ob, c))):
                if not q.startswith("."):
                    res.append((c, q))
        return res

    def finals(self):
        """[(place, qid, path)] of every entry in a final place (outbox/<c>, quarantine,
        hold, badmail)."""
        res = []
        for c, q in self.outbox():
            res.append(("outbox/" + c, q, os.path.join(self.spool, "outbox", c, q)))
        for s in FINAL:
            for q in self.entries(s):
                res.append((s, q, os.path.join(self.spool, s, q)))
        return res

    def in_flight(self):
        return sum(len(self.entries(s)) for s in ("inbound", "incoming", "scan", "route"))

    def wait_final(self, n, timeout=60):
        harness.wait_for(lambda: len(self.finals()) >= n and self.in_flight() == 0,
                         timeout=timeout,
                         what="%d messages in final places (now %d final, %d in flight)\n%s"
                         % (n, len(self.finals()), self.in_flight(), self.logtext()[-3000:]))
        return self.finals()

    def read(self, path, name):
        with open(os.path.join(path, name), "rb") as f:
            return f.read()

    def assert_delivered_clean(self, messages=()):
        """The delivery invariant over every outbox entry (and any other delivered
        messages given, such as what an SMTP sink received)."""
        assert_delivered_clean(outbox_messages(self.spool) + list(messages), spool=self.spool)

    def check_invariant(self, expected_msgs):
        """Every message (bytes) appears exactly once per connector (or once in quarantine/hold/
        badmail), nothing in flight, no orphan work directory. expected_msgs: list of bytes."""
        assert self.in_flight() == 0, "messages still in flight: %s" % {
            s: self.entries(s) for s in ("inbound", "incoming", "scan", "route")}
        seen = {}
        for place, q, path in self.finals():
            data = self.read(path, "message") if os.path.exists(os.path.join(path, "message")) else None
            if data is not None and place.startswith("outbox/"):
                data = strip_added_headers(data)
            seen.setdefault(data, []).append((place, q))
        for m in expected_msgs:
            places = seen.get(m, [])
            assert len(places) >= 1, "message lost: %r" % m[:80]
            qids = set(q for _, q in places)
            assert len(qids) == 1, "message under several queue IDs: %s" % places
            kinds = [p for p, _ in places]
            assert len(kinds) == len(set(kinds)), "message duplicated: %s" % places
            non_outbox = [k for k in kinds if not k.startswith("outbox/")]
            assert not non_outbox or len(kinds) == 1, "message in outbox and elsewhere: %s" % kinds


# ---- the delivery invariant (issue 14) ----------------------------------------------
# Nothing infected and nothing unscanned reaches an outbox. Every delivery test ends by
# taking what was delivered, scanning it whole with clamscan and the test database, then
# splitting it again with the real splitter and scanning every part: all of it must be
# clean, and no re-split part may have the sha256 of a part that a scanner flagged
# anywhere in the spool. Mail that an administrator released on purpose is the one
# exception.

# Signature-file payloads a test may send; a delivered part with one of these hashes is a
# bypass even when clamscan's reading of the part differs.
_KNOWN_BAD = ("eicar.com", "eicar-encrypted.zip", "eicar-nested20.zip")
_KNOWN_BAD_FILES = ("/usr/share/clamav-testfiles/clam.exe",)


def _sha256_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def flagged_hashes(spool):
    """sha256 of every part that a scanner called infected in any entry of the spool (its
    manifest and verdicts), plus those of the test signature files."""
    bad = set()
    for name in _KNOWN_BAD:
        p = os.path.join(harness.sigdir(), name)
        if os.path.exists(p):
            bad.add(_sha256_file(p))
    for p in _KNOWN_BAD_FILES:
        if os.path.exists(p):
            bad.add(_sha256_file(p))
    if not spool:
        return bad
    for root, dirs, files in os.walk(spool):
        # Stages still running empty trash/ and move entries on while we walk: an entry
        # that went away is read where it arrived, or was gone for good.
        if root == spool and "trash" in dirs:
            dirs.remove("trash")
        if "verdicts" not in files or "manifest" not in files:
            continue
        infected = set()
        try:
            with open(os.path.join(root, "verdicts"), "rb") as f:
                vtext = f.read()
            with open(os.path.join(root, "manifest"), "rb") as f:
                mtext = f.read()
        except FileNotFoundError:
            continue
        for line in vtext.decode("ascii", "replace").splitlines():
            tok = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
            if line.startswith("scan ") and tok.get("verdict") == "infected":
                infected.add(tok.get("part"))
        for line in mtext.decode("ascii", "replace").splitlines():
            w = line.split()
            if len(w) < 2 or w[0] != "part" or w[1] not in infected:
                continue
            tok = dict(t.split("=", 1) for t in w[2:] if "=" in t)
            if len(tok.get("sha256", "")) == 64:
                bad.add(tok["sha256"])
    return bad


def assert_delivered_clean(messages, spool=None, flagged=None):
    """messages: [(label, bytes)] as delivered. Each, scanned whole, is clean; each,
    split again by BIN/splitter, has only clean parts, none with a flagged sha256."""
    if not messages:
        return
    bad = set(flagged or ()) | flagged_hashes(spool)
    work = harness.tmpdir("delivered")
    files = []
    paths = []
    for i, (label, data) in enumerate(messages):
        mpath = os.path.join(work, "m%d" % i)
        with open(mpath, "wb") as f:
            f.write(data)
        files.append((label, mpath))
        paths.append((label, mpath))
    # Re-split with the real splitter, many files per process (as the stage works).
    for k in range(0, len(paths), 400):
        chunk = paths[k:k + 400]
        out = os.path.join(work, "parts%d" % k)
        r = subprocess.run([harness.bin_path("splitter"), "-o", out, "-x"] +
                           [p for _, p in chunk],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        assert r.returncode == 0, "re-split of delivered mail failed (exit %d): %s" % (
            r.returncode, r.stderr.decode(errors="replace")[-500:])
        for j, (label, _) in enumerate(chunk):
            pdir = out if len(chunk) == 1 else os.path.join(out, str(j + 1))
            for n in sorted(os.listdir(pdir)):
                fp = os.path.join(pdir, n)
                if not n.endswith(".ATT") or not os.path.isfile(fp):
                    continue
                assert _sha256_file(fp) not in bad, \
                    "delivered %s holds part %s with the hash of a flagged part" % (label, n)
                files.append(("%s part %s" % (label, n), fp))
    listing = os.path.join(work, "files")
    with open(listing, "w") as f:
        f.write("".join(p + "\n" for _, p in files))
    r = subprocess.run(["/usr/bin/clamscan", "--no-summary", "--infected", "--stdout",
                        "--alert-exceeds-max=yes", "--alert-encrypted=yes",
                        "--database=" + harness.sigdir(), "--file-list=" + listing],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    if r.returncode != 0:
        by_path = {p: label for label, p in files}
        hits = []
        for line in r.stdout.decode(errors="replace").splitlines():
            path = line.split(": ", 1)[0]
            hits.append("%s: %s" % (by_path.get(path, path), line))
        raise AssertionError("delivered mail is not clean (clamscan exit %d):\n%s\n%s" % (
            r.returncode, "\n".join(hits), r.stderr.decode(errors="replace")[-500:]))


def outbox_messages(spool, include_released=False):
    """[(label, bytes)] of every outbox entry's message; entries an administrator released
    from quarantine on purpose are left out unless include_released."""
    res = []
    ob = os.path.join(spool, "outbox")
    for c in sorted(os.listdir(ob)) if os.path.isdir(ob) else []:
        for q in sorted(os.listdir(os.path.join(ob, c))):
            d = os.path.join(ob, c, q)
            if q.startswith(".") or not os.path.isfile(os.path.join(d, "message")):
                continue
            try:
                with open(os.path.join(d, "trace"), "rb") as f:
                    trace = f.read()
                if not include_released and b" release requested" in trace:
                    continue
                with open(os.path.join(d, "message"), "rb") as f:
                    res.append(("outbox/%s/%s" % (c, q), f.read()))
            except FileNotFoundError:
                continue  # a connector delivered it meanwhile
    return res
