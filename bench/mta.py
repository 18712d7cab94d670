#!/usr/bin/env python3
"""spoold behind a real Postfix (issue 19): `make bench-mta`.

    python3 bench/mta.py [--bin DIR] [--runs N] [--quick|--smoke] [--corpora a,b]
                         [--modes lmtp,pipe] [--out FILE] [--keep]

A throwaway Postfix, built as tests/lib/postfix.py and tests/t_postfix.py build it (its
own config and queue under a temp directory, loopback only), with the filter services of
docs/postfix.md: Postfix's own `smtp-source` sends corpus a and corpus b (the shapes of
bench/run.py, one message per smtp-source process, since smtp-source sends one file and
the corpora must not repeat content) to Postfix's smtpd; Postfix hands each message to
the filter; the filter re-injects into Postfix (the doc's `spoold-reinject` service on a
Unix socket); Postfix relays it to Postfix's `smtp-sink`, which dumps each message into
a file (in /dev/shm where there is one: the sink's writes are not the filter's).

Filters compared, all with one clamd (RELOADed, an empty cache, before every timed run):
  lmtp     spoold via its LMTP intake (content_filter = spoold-lmtp:unix:...), lmtpd
  pipe     spoold via pipe(8) and `spoolctl inject` (content_filter = spoold:dummy)
  amavis   amavisd-new as Debian's README.postfix sets it up: content_filter =
           smtp-amavis:[127.0.0.1]:PORT (a dedicated smtp(8) client, maxproc 2), and a
           dedicated re-injection smtpd on 127.0.0.1:PORT2 with content_filter empty;
           the amavisd is a private one (bench/amavis.py: its own config, directories and
           ports, 2 children, virus checks only, clamd CONTSCAN, D_DISCARD and a local
           quarantine). The ports are free ones, not 10024/10025, so that a packaged
           amavisd or another MTA cannot answer in its place. Measured when amavisd-new is
           installed (`sh conf/deps.sh --bench`; `make bench-mta` does it); otherwise the
           report says it is not installed and not measured.
Reported per corpus and filter: msg/s (all messages sent until every clean one is in the
sink and every EICAR one in the filter's quarantine), latency p50/p99 (from the start of a
message's smtp-source to the dump file's mtime; every message is offered at once, so this
is the latency under saturation, queueing included), and CPU per message of Postfix (every
process under its master, pipe(8)'s spoolctl excepted), the filter (spoold's tree plus
those spoolctl, or amavisd's tree), clamd, the sink, the kernel (kernel threads, irq) and the senders. The
table is printed and, with --out, written into a file's "## Behind Postfix" section
(docs/PERFORMANCE.md keeps it below its analysis mark).
"""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import amavis  # noqa: E402  (the private amavisd-new)
import run as brun  # noqa: E402  (corpora, cold clamd, CpuMeter, tables)
from lib import spool as libspool  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.postfix import BASE_SERVICES, MAIN, free_port, listening, section_blocks  # noqa: E402

SCALE = dict(a=(2000, 1, 20 << 10), b=(500, 5, 100 << 10))
QUICK = dict(a=(300, 1, 20 << 10), b=(60, 5, 100 << 10))
SMOKE = dict(a=(20, 1, 20 << 10))  # the test: one EICAR in 20
SENDERS = 4  # concurrent smtp-source processes
DOMAIN = "bench.example"


def say(msg):
    brun.say(msg)


def pids_of(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Setup:
    """One filter behind one Postfix, a sink, a spool; start() ... stop()."""

    def __init__(self, args, mode, cd, base):
        self.args, self.mode, self.cd, self.base = args, mode, cd, base
        os.makedirs(base)
        os.chmod(base, 0o755)
        self.pin, self.psink = free_port(), free_port()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else base
        self.dump = tempfile.mkdtemp(prefix="spoold-mta-sink-", dir=shm)
        os.chmod(self.dump, 0o777)
        self.spool = os.path.join(base, "spool")
        self.conf = os.path.join(base, "spoold.conf")
        self.pfdir = os.path.join(base, "postfix")
        self.queue = os.path.join(self.pfdir, "queue")
        self.mail = os.path.join(base, "mail")
        self.procs = []
        # amavis: its SMTP port and Postfix's re-injection port for it.
        self.pamavis, self.preinject = (free_port(), free_port()) if mode == "amavis" \
            else (None, None)
        self.amavis = self.spoold = None
        self.rname = "amavis-reinject" if mode == "amavis" else "spoold-reinject"

    # ---- spoold --------------------------------------------------------------------
    def spoold_conf(self):
        rsock = os.path.join(self.queue, "public", "spoold-reinject")
        text = 'spool_dir = "%s";\nrescan_interval = 3600;\nallow_root = true;\n' % self.spool
        text += 'log = { level = "warning"; };\n'
        text += "scanners = (\n\t{\n%s\t}\n);\n" % libspool._group(
            brun.scanner_clamd(self.cd.unix_addr), "\t\t")
        # The doc's connector, with this instance's socket.
        (conn,) = section_blocks("## spoold.conf")[:1]
        text += conn.replace("/var/spool/postfix/public/spoold-reinject", rsock)
        if self.mode == "lmtp":
            (lm,) = section_blocks("### spoold.conf")
            text += lm.replace("/var/spool/spoold/run/lmtp",
                               os.path.join(self.spool, "run", "lmtp"))
        with open(self.conf, "w") as f:
            f.write(text)
        os.chmod(self.conf, 0o644)

    # ---- Postfix -------------------------------------------------------------------
    def amavis_services(self):
        """README.postfix of Debian's amavisd-new, sections 2.2 and 2.3: the dedicated
        smtp client into amavisd (maxproc 2, as amavisd's two children) and the
        dedicated re-injection smtpd, which must not filter again."""
        master = ("smtp-amavis unix - - n - 2 smtp\n"
                  "  -o smtp_data_done_timeout=1200\n"
                  "  -o smtp_send_xforward_command=yes\n"
                  "  -o smtp_tls_note_starttls_offer=no\n")
        master += "127.0.0.1:%d inet n - n - - smtpd\n  -o syslog_name=postfix/%s\n" % (
            self.preinject, self.rname)
        for o in ("content_filter=", "smtpd_delay_reject=no",
                  "smtpd_client_restrictions=permit_mynetworks,reject",
                  "smtpd_helo_restrictions=", "smtpd_sender_restrictions=",
                  "smtpd_recipient_restrictions=permit_mynetworks,reject",
                  "smtpd_data_restrictions=reject_unauth_pipelining",
                  "smtpd_end_of_data_restrictions=", "smtpd_restriction_classes=",
                  "mynetworks=127.0.0.0/8", "smtpd_error_sleep_time=0",
                  "smtpd_soft_error_limit=1001", "smtpd_hard_error_limit=1000",
                  "smtpd_client_connection_count_limit=0",
                  "smtpd_client_connection_rate_limit=0",
                  "receive_override_options=no_header_body_checks,no_unknown_recipient_checks,"
                  "no_milters", "local_header_rewrite_clients=", "smtpd_milters=",
                  "local_recipient_maps=", "relay_recipient_maps="):
            master += "  -o %s\n" % o
        main = ("content_filter = smtp-amavis:[127.0.0.1]:%d\n"
                "receive_override_options = no_address_mappings\n" % self.pamavis)
        return master, main

    def postfix_conf(self):
        nobody = pwd.getpwnam("nobody")
        main_master = section_blocks("## master.cf")[0]
        master = "%d inet n - n - - smtpd\n" % self.pin
        pipe_svc, reinject = main_master.split("spoold-reinject", 1)
        main = "relayhost = [127.0.0.1]:%d\n" % self.psink
        if self.mode == "amavis":
            am_master, am_main = self.amavis_services()
            master += am_master
            main += am_main
        else:
            # Its own syslog name, so that its connections can be counted in the maillog.
            svc, opts = reinject.split("\n", 1)
            master += "spoold-reinject" + svc + "\n  -o syslog_name=postfix/spoold-reinject\n" \
                + opts
        if self.mode == "pipe":
            master += pipe_svc.replace("/usr/local/bin/spoolctl",
                                       os.path.join(self.args.bin, "spoolctl")).replace(
                "/etc/spoold/spoold.conf", self.conf).replace("user=spoold", "user=nobody")
            main += section_blocks("## main.cf")[0]
        elif self.mode == "lmtp":
            sock = os.path.join(self.spool, "run", "lmtp")
            master += section_blocks("### master.cf")[0]
            main += section_blocks("### main.cf")[0].replace("/var/spool/spoold/run/lmtp",
                                                             sock)
        for x in (self.pfdir, self.queue, self.mail, os.path.join(self.pfdir, "data")):
            os.makedirs(x, exist_ok=True)
        pf = pwd.getpwnam("postfix")
        os.chown(os.path.join(self.pfdir, "data"), pf.pw_uid, pf.pw_gid)
        with open(os.path.join(self.pfdir, "main.cf"), "w") as f:
            f.write(MAIN.format(q=self.queue, d=self.pfdir, mail=self.mail,
                                uid=nobody.pw_uid, gid=nobody.pw_gid))
            f.write(main)
            # The bench's own: no bounce to a sender that does not exist.
            f.write("\nnotify_classes =\n")
        with open(os.path.join(self.pfdir, "master.cf"), "w") as f:
            f.write(master + BASE_SERVICES)
        for n in ("vmailbox", "valias"):
            open(os.path.join(self.pfdir, n), "w").close()

    def postfix(self, *a, check=True):
        r = subprocess.run(["postfix", "-c", self.pfdir] + list(a), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError("postfix %s: %s\n%s" % (" ".join(a), r.stdout, self.maillog()))
        return r

    def maillog(self):
        try:
            with open(os.path.join(self.pfdir, "maillog"), errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def start(self):
        # The sink: Postfix's smtp-sink, dumping each message (its mtime is the arrival).
        self.sink = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-d", os.path.join(self.dump, "%H%M%S."),
             "127.0.0.1:%d" % self.psink, "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.mode == "amavis":
            return self.start_amavis()
        os.makedirs(os.path.join(self.spool, "inbound"))
        self.spoold_conf()
        logf = open(os.path.join(self.base, "spoold.log"), "ab")
        self.spoold = subprocess.Popen([os.path.join(self.args.bin, "spoold"), "-c", self.conf],
                                       stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 60
        want = {"splitter", "scanner-runner", "router"} | (
            {"lmtpd"} if self.mode == "lmtp" else set())
        while True:
            st = libspool.read_status(self.spool)
            sock_ok = self.mode != "lmtp" or os.path.exists(
                os.path.join(self.spool, "run", "lmtp"))
            if st and {s["name"] for s in st} >= want and sock_ok and all(
                    s["state"] == "running" for s in st):
                break
            if time.monotonic() > deadline or self.spoold.poll() is not None:
                raise RuntimeError("spoold did not come up:\n" + self.spoold_log())
            time.sleep(0.1)
        nobody = pwd.getpwnam("nobody")
        pf = pwd.getpwnam("postfix")
        if self.mode == "pipe":
            # As t_postfix.py: the pipe runs spoolctl as nobody, the spool's owner.
            for root, dirs, files in os.walk(self.spool):
                for x in [root] + [os.path.join(root, f) for f in files]:
                    os.chown(x, nobody.pw_uid, nobody.pw_gid)
        else:
            # As t_lmtp_postfix.py: Postfix's lmtp client (postfix) in the spool's group.
            sock = os.path.join(self.spool, "run", "lmtp")
            for x in (self.spool, os.path.join(self.spool, "run"), sock):
                os.chown(x, -1, pf.pw_gid)
        self.postfix_conf()
        self.postfix("set-permissions", "create-missing", check=False)
        self.postfix("start")
        deadline = time.monotonic() + 30
        rsock = os.path.join(self.queue, "public", "spoold-reinject")
        while not (listening(self.pin) and listening(self.psink) and os.path.exists(rsock)):
            if time.monotonic() > deadline:
                raise RuntimeError("postfix/sink did not come up:\n" + self.maillog())
            time.sleep(0.1)
        return self

    def start_amavis(self):
        self.amavis = amavis.Amavis(os.path.join(self.base, "amavis"), self.pamavis,
                                    "smtp:[127.0.0.1]:%d" % self.preinject,
                                    self.cd.socket_path)
        self.amavis.start()
        self.postfix_conf()
        self.postfix("set-permissions", "create-missing", check=False)
        self.postfix("start")
        deadline = time.monotonic() + 30
        while not all(listening(p) for p in (self.pin, self.psink, self.preinject)):
            if time.monotonic() > deadline:
                raise RuntimeError("postfix/sink did not come up:\n" + self.maillog())
            time.sleep(0.1)
        return self

    def filter_log(self):
        return self.amavis.log() if self.amavis else self.spoold_log()

    def spoold_log(self):
        try:
            with open(os.path.join(self.base, "spoold.log"), errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self):
        self.postfix("stop", check=False)
        if self.amavis:
            self.amavis.stop()
        if self.spoold and self.spoold.poll() is None:
            self.spoold.send_signal(signal.SIGTERM)
            try:
                self.spoold.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.spoold.kill()
                self.spoold.wait()
        if self.sink.poll() is None:
            self.sink.terminate()
            self.sink.wait(timeout=10)
        shutil.rmtree(self.dump, ignore_errors=True)

    # ---- counting ------------------------------------------------------------------
    def reinject_connections(self):
        """Connections Postfix's re-injection smtpd took from the filter (its "connect
        from" lines; the service logs as postfix/spoold-reinject or amavis-reinject)."""
        try:
            with open(os.path.join(self.pfdir, "maillog"), errors="replace") as f:
                return sum(1 for ln in f if self.rname in ln and " connect from " in ln)
        except FileNotFoundError:
            return 0

    def arrived(self):
        return [e for e in os.scandir(self.dump) if e.is_file()]

    def quarantined(self):
        if self.amavis:
            return self.amavis.quarantined()
        try:
            return len([x for x in os.listdir(os.path.join(self.spool, "quarantine"))
                        if not x.startswith(".")])
        except FileNotFoundError:
            return 0

    def pids(self):
        return dict(master=pids_of(os.path.join(self.queue, "pid", "master.pid")),
                    filter=(self.amavis.proc if self.amavis else self.spoold).pid,
                    sink=self.sink.pid)


def send_all(s, files, t_sent):
    """smtp-source once per message, SENDERS at a time; t_sent[i] = monotonic start."""
    nxt = [0]
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(files):
                return
            t_sent[i] = time.monotonic()
            r = subprocess.run(["smtp-source", "-F", files[i], "-f", "bench@" + DOMAIN,
                                "-t", "rcpt%d@%s" % (i, DOMAIN), "-s", "1", "-m", "1",
                                "127.0.0.1:%d" % s.pin], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                errors.append("%s: %s" % (files[i], r.stderr[-300:]))

    ths = [threading.Thread(target=worker, daemon=True) for _ in range(SENDERS)]
    for t in ths:
        t.start()
    return ths, errors


def lf_corpus(work, k, n, natt, size):
    """The corpus with LF line ends (smtp-source -F appends CRLF to each line)."""
    files, total, inf = brun.make_corpus(work, k, n, natt, size)
    out = []
    for p in files:
        with open(p, "rb") as f:
            data = f.read().replace(b"\r\n", b"\n")
        q = p + ".lf"
        with open(q, "wb") as f:
            f.write(data)
        out.append(q)
    return out, total, inf


def index_of(path):
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        return int(head.split(b"Subject: bench ", 1)[1].split(b"\n", 1)[0].strip())
    except (IndexError, ValueError):
        return None


def one_run(args, mode, cd, corpus, k, seq):
    files, total, inf = corpus
    n = len(files)
    s = Setup(args, mode, cd, os.path.join(args.work, "%s-%s-%d" % (mode, k, seq)))
    try:
        s.start()
        brun.clamd_cold(cd)  # every run starts from an empty clamd cache
        pids = s.pids()
        meter = brun.CpuMeter({pids["master"]: "postfix", pids["filter"]: "filter",
                               pids["sink"]: "sink"}, {cd.pid: "clamd"})
        t_sent = [None] * n
        c0 = os.times()
        meter.start()
        t0 = time.monotonic()
        ths, errors = send_all(s, files, t_sent)
        deadline = t0 + args.timeout
        while True:
            arr = s.arrived()
            if len(arr) >= n - inf and s.quarantined() >= inf:
                break
            if time.monotonic() > deadline or errors:
                raise RuntimeError("%s/%s: %d of %d in the sink, %d quarantined after %d s; "
                                   "%s\n%s\n%s" % (mode, k, len(arr), n - inf, s.quarantined(),
                                                   args.timeout, errors[:3], s.maillog(),
                                                   s.filter_log()))
            time.sleep(0.01)
        t1 = time.monotonic()
        meter.stop()
        for t in ths:
            t.join()
        c1 = os.times()
        cpu = meter.result()
        # Latency: the dump file's mtime (CLOCK_REALTIME) against the send's start, both
        # taken to one clock through the offset measured now.
        off = time.time() - time.monotonic()
        lat = []
        for e in arr:
            i = index_of(e.path)
            if i is not None and t_sent[i] is not None:
                lat.append((e.stat().st_mtime - off - t_sent[i]) * 1e3)
        dup = len(arr) - len({index_of(e.path) for e in arr})
        g = dict(postfix=0.0, filter=0.0, clamd=cpu.get("clamd", 0.0), sink=0.0,
                 kernel=cpu["kernel threads"] + cpu["irq+softirq"],
                 senders=(c1[2] + c1[3]) - (c0[2] + c0[3]))
        for key, v in cpu.items():
            # pipe(8) reaps the spoolctl inject it runs: that is the filter's CPU.
            if key.startswith(("postfix:pipe+children", "filter:")):
                g["filter"] += v
            elif key.startswith("postfix:"):
                g["postfix"] += v
            elif key.startswith("sink:"):
                g["sink"] += v
        procs = {}
        for key, v in cpu.items():
            if key.startswith(("filter:", "postfix:pipe+children")):
                name = key.split(":", 1)[1].replace("pipe+children", "spoolctl inject")
                procs[name] = procs.get(name, 0.0) + 1e3 * v / n
        res = dict(secs=t1 - t0, n=n, delivered=len(arr), quarantined=s.quarantined(),
                   procs=procs, conns=s.reinject_connections(),
                   dup=dup, p50=brun.pct(lat, 50), p99=brun.pct(lat, 99),
                   cpu={x: 1e3 * v / n for x, v in g.items()},
                   other=cpu["other"] / (t1 - t0))
        say("%s corpus %s: %d msgs in %.2f s (%.1f msg/s), p50 %.0f ms p99 %.0f ms, "
            "CPU ms/msg %s, filter %s, re-injection connections %d, other load %.2f cores"
            % (mode, k, n, res["secs"], n / res["secs"], res["p50"], res["p99"],
               {x: round(v, 2) for x, v in res["cpu"].items()},
               {x: round(v, 2) for x, v in procs.items()}, res["conns"], res["other"]))
        if dup:
            raise RuntimeError("%d duplicate arrivals in the sink" % dup)
        return res
    finally:
        s.stop()
        if not args.keep:
            shutil.rmtree(s.base, ignore_errors=True)


def main():
    ap = brun.filter_bench_args(__doc__, "a,b", 1200)
    ap.add_argument("--modes", default=None,
                    help="default lmtp,pipe and, when amavisd-new is installed, amavis")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    if os.geteuid() != 0:
        sys.exit("bench-mta: needs root (a Postfix instance, a pipe(8) user)")
    for tool in ("postfix", "smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            sys.exit("bench-mta: %s not installed (Debian package postfix)" % tool)
    brun.filter_bench_workdir(args, "spoold-mta-")
    scale = SMOKE if args.smoke else QUICK if args.quick else SCALE
    corpora = [k for k in args.corpora.split(",") if k in scale]
    # amavisd-new is a bench-only package: measured when installed, else said so.
    amavis_missing = amavis.installed()
    modes = (args.modes or "lmtp,pipe" + ("" if amavis_missing else ",amavis")).split(",")
    if "amavis" in modes and amavis_missing:
        sys.exit("bench-mta: %s" % amavis_missing)
    started = time.time()
    say("work %s; corpora %s; filters %s; %d runs, alternating" % (args.work, corpora, modes,
                                                                  args.runs))
    notes = {}
    if amavis_missing:
        notes["amavis"] = amavis_missing + ": not measured"
        say(notes["amavis"])
    else:
        notes["packaged"] = amavis.quiet_packaged()
        notes["version"] = amavis.version()
        say("%s; the packaged amavisd: %s" % (notes["version"], notes["packaged"]))
    # LocalSocketMode 666: amavisd connects as its user amavis.
    cd = Clamd(os.path.join(args.work, "clamd"), brun.sigdir(args.work),
               stream_max_length="200M", extra={"MaxThreads": "8", "LocalSocketMode": "666"})
    os.chmod(os.path.dirname(cd.socket_path), 0o755)
    brun.CLAMDS[cd.unix_addr] = cd
    results = {}
    try:
        corp = {}
        for k in corpora:
            corp[k] = lf_corpus(args.work, k, *scale[k])
            say("corpus %s: %d messages, %.1f MB, %d with EICAR" % (
                k, len(corp[k][0]), corp[k][1] / 1e6, corp[k][2]))
        seq = 0
        for k in corpora:
            for r in range(args.runs):
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    seq += 1
                    results.setdefault((k, mode), []).append(
                        one_run(args, mode, cd, corp[k], k, seq))
    finally:
        cd.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    md = report(results, corpora, modes, args, notes, time.time() - started)
    print(md)
    if args.out:
        brun.put_section(args.out, md, MARK_BEGIN, MARK_END)
        say("wrote the section into %s" % args.out)


def report(results, corpora, modes, args, notes, elapsed):
    rows, prows = [], []
    med = brun.median
    for k in corpora:
        for mode in modes:
            rs = results.get((k, mode), [])
            if not rs:
                continue
            n = rs[0]["n"]
            t = med([r["secs"] for r in rs])
            cpu = {x: med([r["cpu"][x] for r in rs]) for x in rs[0]["cpu"]}
            rows.append(["%s (%d msgs)" % (k, n), {"lmtp": "spoold via LMTP (lmtpd)",
                                                   "pipe": "spoold via pipe (spoolctl inject)",
                                                   "amavis": "amavisd-new (smtp-amavis)"
                                                   }.get(mode, mode),
                         n / t, med([r["p50"] for r in rs]), med([r["p99"] for r in rs]),
                         cpu["postfix"], cpu["filter"], cpu["clamd"], cpu["sink"],
                         cpu["kernel"], cpu["senders"], med([r["other"] for r in rs]),
                         "%d/%d/%d" % (rs[-1]["delivered"], rs[-1]["quarantined"],
                                       rs[-1]["dup"])])
            names = sorted({x for r in rs for x in r["procs"]})
            prows.append([k, mode, ", ".join("%s %.3f" % (x, med([r["procs"].get(x, 0.0)
                                                                for r in rs])) for x in names),
                          med([r["conns"] for r in rs])])
        if "amavis" in notes:
            rows.append(["%s" % k, "amavisd-new", "not measured", "-", "-", "-", "-", "-",
                         "-", "-", "-", "-", "-"])
    s = "## Behind Postfix (`make bench-mta`)\n\n"
    s += ("`python3 bench/mta.py %s` on %s, %.0f s, median of %d runs per corpus and filter "
          "(the filters alternate). Postfix %s, smtp-source and smtp-sink from Debian's "
          "postfix package; clamd RELOADed before every timed run. Each message is sent "
          "by its own `smtp-source -F FILE` (%d at a time: smtp-source sends one file, and "
          "the corpora must not repeat content, or clamd's cache would answer); the clock "
          "runs from the first send until every clean message is in the sink and every "
          "EICAR one in the filter's quarantine. Latency: from the start of a message's "
          "smtp-source to the mtime of its file in the sink's dump directory, all messages "
          "offered at once (latency under saturation). CPU ms per message from /proc: "
          "Postfix = every process under its master (but the `spoolctl inject` processes "
          "that pipe(8) runs and reaps), filter = spoold's tree plus those spoolctl, or "
          "amavisd's tree (its children and the file(1) processes they run), kernel = kernel threads + "
          "irq + softirq (machine-wide), senders = the smtp-source processes; other load = everything "
          "else the shared 2-core machine ran meanwhile, in cores. Arrived: delivered to "
          "the sink / quarantined / duplicates.\n\n"
          % (" ".join(sys.argv[1:]), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             elapsed, args.runs, postfix_version(), SENDERS))
    if "amavis" in notes:
        s += "**amavisd-new:** %s.\n\n" % notes["amavis"]
    else:
        s += ("**amavisd-new:** %s, a private instance (bench/amavis.py) behind Postfix as "
              "Debian's README.postfix says: `content_filter = smtp-amavis:[127.0.0.1]:PORT` "
              "(a dedicated smtp client, maxproc 2, XFORWARD), re-injection into a dedicated "
              "smtpd on 127.0.0.1 with `content_filter=` (free ports, not 10024/10025); "
              "2 children, virus checks only, clamd CONTSCAN, D_DISCARD with a local "
              "quarantine; a fresh amavisd for each run, as spoold. The package's own "
              "daemon: %s.\n\n" % (notes["version"], notes["packaged"]))
    s += brun.table(["corpus", "filter", "msg/s", "p50 ms", "p99 ms", "Postfix ms/msg",
                     "filter ms/msg", "clamd ms/msg", "sink ms/msg", "kernel ms/msg",
                     "senders ms/msg", "other load cores", "arrived"], rows)
    s += ("\nThe filter's CPU per message by process (ms; a stage includes the children it "
          "reaped), and the connections Postfix's re-injection service took from "
          "the filter, connector-smtp or amavisd (its `connect from` log lines):\n\n")
    s += brun.table(["corpus", "filter", "processes", "re-injection connections"], prows)
    return s


def postfix_version():
    r = subprocess.run(["postconf", "-d", "-h", "mail_version"], stdout=subprocess.PIPE,
                       text=True)
    return r.stdout.strip() or "?"


MARK_BEGIN = "<!-- bench-mta: begin -->"
MARK_END = "<!-- bench-mta: end -->"


if __name__ == "__main__":
    main()
