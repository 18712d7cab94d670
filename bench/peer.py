#!/usr/bin/env python3
"""spoold against amavisd-new, side by side (issue 19): `make bench-peer`.

    python3 bench/peer.py [--bin DIR] [--runs N] [--corpora a,b,c] [--quick|--smoke]
                          [--variants amavis,inject,drop] [--out FILE] [--work DIR] [--keep]

One real clamd (bench/run.py's test database), one SMTP sink (bench/sink.py), and the
filters, each taking the same corpus (bench/run.py's shapes, distinct content):
  amavis   a private amavisd-new (bench/amavis.py; two children, virus checks only,
           clamd CONTSCAN, D_DISCARD + local quarantine), fed by two SMTP connections
           on its own port; it relays clean mail to the sink
  inject   spoold (clamd FILDES), fed by `spoolctl inject -f SENDER RCPT < message`, two
           at a time (what Postfix's pipe(8) transport does); connector-smtp relays to
           the sink
  drop     the same spoold, fed by writing each message as .NAME into inbound/ and
           renaming it (a local MTA's drop)
Every timed run starts with clamd RELOADed (an empty cache: within a run the distinct
content means nothing repeats) and a `sync`; spoold gets a fresh spool per run, amavisd
runs all along (its start-up is not timed; a warm-up of 20 other messages passes through
it first). The filters alternate within each round (reversed every other round) and the
figures are medians over the rounds. The clock runs from the first message offered until
every clean message is in the sink and every EICAR one in the filter's quarantine (and,
for amavisd, every SMTP reply is in: it answers after relaying or discarding). Reported:
msg/s, the ratio to amavisd-new (median of the per-round ratios), CPU ms per message of
the filter (amavisd's process tree; spoold's tree plus the `spoolctl inject` processes),
of clamd, of the sink, of the kernel (kernel threads, irq) and the other load on the
machine, and the bytes written (the work directory's disk from /proc/diskstats, sync to
sync, others included; and the filter's own, from /proc/<pid>/io).
"""
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import amavis  # noqa: E402
import run as brun  # noqa: E402  (corpora, Run, cold clamd, CpuMeter, disk, tables)
from lib.clamd import Clamd, free_port  # noqa: E402

SCALE = dict(a=(2000, 1, 20 << 10), b=(500, 5, 100 << 10), c=(20, 1, 20 << 20))
QUICK = dict(a=(400, 1, 20 << 10), b=(100, 5, 100 << 10), c=(5, 1, 20 << 20))
SMOKE = dict(a=(20, 1, 20 << 10))  # the test: one EICAR in 20
GOALS = dict(a=8.0, b=4.0, c=1.5)  # spoold / amavisd-new, issue 19
CONNS = 2  # SMTP connections into amavisd, spoolctl inject processes at a time
SENDER = "sender@example.org"
LABEL = dict(amavis="amavisd-new (SMTP, 2 connections)",
             inject="spoold, `spoolctl inject` (2 at a time)",
             drop="spoold, file drop into inbound/")
MARK_BEGIN = "<!-- bench-peer: begin -->"
MARK_END = "<!-- bench-peer: end -->"


def say(msg):
    brun.say(msg)


def rcpt(i):
    return "rcpt%d@example.com" % i  # as the corpus's To: header (the drop's envelope)


class Sink:
    """bench/sink.py on a free port; its counters from the stats file in /dev/shm."""

    def __init__(self, work):
        self.port = free_port()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else work
        self.stats = os.path.join(shm, "spoold-peer-sink-%d.stats" % os.getpid())
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "sink.py"),
                                      str(self.port), self.stats], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.stats) and amavis.listening(self.port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sink did not come up")
            time.sleep(0.05)

    def read(self):
        with open(self.stats) as f:
            e, n, b, inf, dup, last = f.read().split()
        return dict(epoch=int(e), n=int(n), bytes=int(b), infected=int(inf), dups=int(dup),
                    last=float(last))

    def new_epoch(self):
        e = self.read()["epoch"]
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self.read()["epoch"] == e:
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not start a new epoch")
            time.sleep(0.01)
        return self.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        try:
            os.unlink(self.stats)
        except FileNotFoundError:
            pass


def spoold_run(args, cd, sink):
    """A fresh spool whose connector "smtp" relays to the sink."""
    r = brun.Run(args, brun.scanner_clamd(cd.unix_addr))
    with open(r.conf) as f:
        text = f.read()
    text = text.replace('\t\tdomains = [ "*" ];\n',
                        '\t\tdomains = [ "*" ];\n\t\ttype = "smtp";\n'
                        '\t\trelay = "smtp://127.0.0.1:%d";\n\t\thelo = "spoold.bench.example";\n'
                        % sink.port)
    with open(r.conf, "w") as f:
        f.write(text)
    return r


def feed_amavis(port, msgs, errors):
    """CONNS SMTP connections, message i over connection i % CONNS, one transaction each."""
    def worker(k):
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=900)
            s.ehlo("sender.bench.example")
            for i in range(k, len(msgs), CONNS):
                try:
                    s.sendmail(SENDER, [rcpt(i)], msgs[i])
                except smtplib.SMTPException as e:
                    errors.append("message %d: %s" % (i, e))
            s.quit()
        except (OSError, smtplib.SMTPException) as e:
            errors.append("connection %d: %s" % (k, e))
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(CONNS)]
    for t in ths:
        t.start()
    return ths


def feed_inject(args, r, files, errors):
    """`spoolctl inject` per message, CONNS at a time (as pipe(8) runs it)."""
    spoolctl = os.path.join(args.bin, "spoolctl")

    def worker(k):
        for i in range(k, len(files), CONNS):
            with open(files[i], "rb") as f:
                p = subprocess.run([spoolctl, "-c", r.conf, "inject", "-f", SENDER, rcpt(i)],
                                   stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if p.returncode != 0:
                errors.append("inject %d: exit %d %s" % (i, p.returncode, p.stderr[-300:]))
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(CONNS)]
    for t in ths:
        t.start()
    return ths


def feed_drop(r, msgs, errors):
    """Each message written as inbound/.mNNNNNN, then renamed to its name: one writer."""
    inbound = os.path.join(r.spool, "inbound")

    def worker():
        for i, data in enumerate(msgs):
            tmp, fin = os.path.join(inbound, ".m%06d" % i), os.path.join(inbound, "m%06d" % i)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                # No fsync: spoold's splitter makes the message durable before it is taken.
                os.rename(tmp, fin)
            except OSError as e:
                errors.append("drop %d: %s" % (i, e))
    t = threading.Thread(target=worker)
    t.start()
    return [t]


def self_io():
    """Bytes this process and the children it reaped (spoolctl inject) made dirty."""
    with open("/proc/self/io") as f:
        kv = dict(ln.split(": ") for ln in f.read().splitlines())
    return int(kv["write_bytes"]) - int(kv["cancelled_write_bytes"])


def one_run(args, variant, ctx, k, seq):
    files, msgs, inf = ctx["corp"][k]
    n, clean = len(files), len(files) - inf
    cd, sink, am = ctx["cd"], ctx["sink"], ctx["amavis"]
    r = None
    if variant == "amavis":
        am.move_quarantine(os.path.join(args.work, "aside", "%03d" % seq))
        root, qcount = am.proc.pid, am.quarantined
        logoff = am.log_size()
    else:
        r = spoold_run(args, cd, sink)
        r.start()
        root = r.proc.pid
        qdir = os.path.join(r.spool, "quarantine")

        def qcount():
            try:
                return sum(1 for e in os.scandir(qdir) if not e.name.startswith("."))
            except FileNotFoundError:
                return 0
    try:
        brun.clamd_cold(cd)  # an empty clamd cache for every timed run
        s0 = sink.new_epoch()
        dev = brun.disk_of(args.work)
        os.sync()  # nothing left dirty from before is charged to this run
        time.sleep(0.5)
        w0, io0, sio0 = brun.sectors_written(dev) if dev else 0, brun.tree_io(root), self_io()
        meter = brun.CpuMeter({root: variant, sink.proc.pid: "sink"}, {cd.pid: "clamd"})
        c0 = os.times()
        errors = []
        meter.start()
        t0 = time.monotonic()
        if variant == "amavis":
            ths = feed_amavis(am.port, msgs, errors)
        elif variant == "inject":
            ths = feed_inject(args, r, files, errors)
        else:
            ths = feed_drop(r, msgs, errors)
        deadline = t0 + args.timeout
        while True:
            s = sink.read()
            if s["n"] - s0["n"] >= clean and qcount() >= inf and not any(
                    t.is_alive() for t in ths):
                break
            if time.monotonic() > deadline or errors:
                raise RuntimeError("%s/%s: %d of %d in the sink, %d of %d quarantined after "
                                   "%.0f s; %s\n%s" % (
                                       variant, k, s["n"] - s0["n"], clean, qcount(), inf,
                                       time.monotonic() - t0, errors[:3],
                                       am.log() if variant == "amavis" else r.logtext()))
            time.sleep(0.005)
        t1 = time.monotonic()
        meter.stop()
        c1 = os.times()
        cpu = meter.result()
        io1 = brun.tree_io(root)
        own = sum(v - io0.get(p, 0) for p, v in io1.items())
        intake_io = self_io() - sio0
        os.sync()  # what the run left dirty is written too: charged to it
        written = brun.sectors_written(dev) - w0 if dev else float("nan")
        time.sleep(1.0)  # a late duplicate or infected arrival still shows
        s1 = sink.read()
        res = dict(secs=t1 - t0, n=n, delivered=s1["n"] - s0["n"],
                   infected=s1["infected"] - s0["infected"], dups=s1["dups"] - s0["dups"],
                   quarantined=qcount(), written=written, own=own)
        filt = sum(v for x, v in cpu.items() if x.startswith(variant + ":"))
        if variant == "inject":
            # The spoolctl processes the harness ran and reaped: spoold's intake.
            filt += (c1[2] + c1[3]) - (c0[2] + c0[3])
        if variant != "amavis":
            # The drop's own writes (the harness writing into inbound/) and spoolctl's
            # are the intake writing the message into the spool: amavisd's smtpd writes
            # its copy too, inside its own tree.
            res["own"] += intake_io
        res["cpu"] = dict(filter=filt, clamd=cpu.get("clamd", 0.0),
                          sink=sum(v for x, v in cpu.items() if x.startswith("sink:")),
                          kernel=cpu["kernel threads"] + cpu["irq+softirq"])
        res["cpu"] = {x: 1e3 * v / n for x, v in res["cpu"].items()}
        res["other"] = cpu["other"] / res["secs"]
        res["harness"] = cpu["harness"] / res["secs"]
        bad = []
        if res["delivered"] != clean or res["infected"] or res["dups"]:
            bad.append("sink: %d delivered of %d, %d infected, %d duplicates"
                       % (res["delivered"], clean, res["infected"], res["dups"]))
        if res["quarantined"] != inf:
            bad.append("quarantined %d of %d" % (res["quarantined"], inf))
        if variant == "amavis":
            passed, blocked, _ = am.passed_blocked(logoff)
            if (passed, blocked) != (clean, inf):
                bad.append("amavisd log: %d passed clean, %d blocked (want %d, %d)"
                           % (passed, blocked, clean, inf))
        else:
            pl = r.places()
            if pl["hold"] or pl["badmail"] or pl["outbox/smtp"]:
                bad.append("spool: %s" % pl)
        say("%s corpus %s: %d msgs in %.2f s (%.1f msg/s); CPU ms/msg %s; written %.1f MB "
            "(own %.1f MB); other load %.2f cores"
            % (variant, k, n, res["secs"], n / res["secs"],
               {x: round(v, 2) for x, v in res["cpu"].items()}, written / 1e6, res["own"] / 1e6,
               res["other"]))
        if bad:
            raise RuntimeError("%s/%s: %s" % (variant, k, "; ".join(bad)))
        return res
    finally:
        if r is not None:
            r.stop(keep=args.keep)


def warm_amavis(args, ctx):
    """20 messages of another corpus through amavisd (its children's first messages load
    code); not timed, but checked like a run."""
    files, total, inf = brun.make_corpus(args.work, "warm", 20, 1, 20 << 10)
    msgs = [open(p, "rb").read() for p in files]
    ctx["corp"]["warm"] = (files, msgs, inf)
    res = one_run(args, "amavis", ctx, "warm", 0)
    del ctx["corp"]["warm"]
    return res


def main():
    ap = brun.filter_bench_args(__doc__, "a,b,c", 1800)
    ap.add_argument("--variants", default="amavis,inject,drop")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    for p in ("spoold", "spoolctl", "splitter", "scanner-runner", "router", "connector-smtp"):
        if not os.access(os.path.join(args.bin, p), os.X_OK):
            sys.exit("bench-peer: %s/%s not found: build first" % (args.bin, p))
    if os.geteuid() != 0:
        sys.exit("bench-peer: needs root (amavisd runs as its user amavis)")
    missing = amavis.installed()
    if missing:
        # Exit 3: the test tells this apart from a failure, and says why it skips.
        print("bench-peer: %s; nothing measured" % missing, flush=True)
        sys.exit(3)
    scale = SMOKE if args.smoke else QUICK if args.quick else SCALE
    corpora = [k for k in args.corpora.split(",") if k in scale]
    variants = args.variants.split(",")
    if "amavis" not in variants:
        sys.exit("bench-peer: the variants must include amavis (the ratios are to it)")
    brun.filter_bench_workdir(args, "spoold-peer-")
    started = time.time()
    say("work %s; corpora %s; filters %s; %d runs, alternating; loadavg %s" % (
        args.work, corpora, variants, args.runs, open("/proc/loadavg").read().strip()))
    packaged = amavis.quiet_packaged()
    say("packaged amavisd: %s" % packaged)
    ctx = dict(corp={})
    results = {}
    sink = am = cd = None
    try:
        cd = Clamd(os.path.join(args.work, "clamd"), brun.sigdir(args.work),
                   stream_max_length="200M",
                   extra={"MaxFileSize": "200M", "MaxScanSize": "400M", "MaxThreads": "8",
                          # amavisd connects as its user amavis.
                          "LocalSocketMode": "666"})
        os.chmod(os.path.dirname(cd.socket_path), 0o755)
        brun.CLAMDS[cd.unix_addr] = cd
        sink = Sink(args.work)
        am = amavis.Amavis(os.path.join(args.work, "amavis"), free_port(),
                           "smtp:[127.0.0.1]:%d" % sink.port, cd.socket_path).start()
        ctx.update(cd=cd, sink=sink, amavis=am)
        for k in corpora:
            files, total, inf = brun.make_corpus(args.work, k, *scale[k])
            # Read before any clock starts (and in the page cache for spoolctl's stdin).
            ctx["corp"][k] = (files, [open(p, "rb").read() for p in files], inf)
            say("corpus %s: %d messages, %.1f MB, %d with EICAR" % (k, len(files), total / 1e6,
                                                                   inf))
        warm_amavis(args, ctx)
        seq = 0
        for k in corpora:
            for rnd in range(args.runs):
                for v in (variants if rnd % 2 == 0 else variants[::-1]):
                    seq += 1
                    results.setdefault((k, v), []).append(one_run(args, v, ctx, k, seq))
        version = amavis.version()
    finally:
        for x in (am, sink, cd):
            if x is not None:
                x.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    md = report(results, corpora, variants, args, version, packaged, time.time() - started)
    print(md)
    if args.out:
        brun.put_section(args.out, md, MARK_BEGIN, MARK_END)
        say("wrote the section into %s" % args.out)
    return 0


def report(results, corpora, variants, args, version, packaged, elapsed):
    med = brun.median
    rows, goal_rows = [], []
    for k in corpora:
        base = results[(k, "amavis")]
        for v in variants:
            rs = results[(k, v)]
            n = rs[0]["n"]
            t = med([r["secs"] for r in rs])
            ratio = med([b["secs"] / r["secs"] for b, r in zip(base, rs)])
            cpu = {x: med([r["cpu"][x] for r in rs]) for x in rs[0]["cpu"]}
            rows.append(["%s (%d msgs)" % (k, n), LABEL[v], n / t,
                         "-" if v == "amavis" else "**%.2fx**" % ratio,
                         cpu["filter"], cpu["clamd"], cpu["sink"], cpu["kernel"],
                         med([r["written"] for r in rs]) / 1e6, med([r["own"] for r in rs]) / 1e6,
                         med([r["other"] for r in rs]),
                         "%d/%d/%d" % (rs[-1]["delivered"], rs[-1]["quarantined"], rs[-1]["dups"])])
            if v != "amavis" and k in GOALS:
                goal_rows.append("| %s | spoold >= %.1fx amavisd-new on corpus %s, %s: %.2fx |" % (
                    "met" if ratio >= GOALS[k] else "**not met**", GOALS[k], k, LABEL[v], ratio))
    s = "## Against amavisd-new (`make bench-peer`)\n\n"
    s += ("`python3 bench/peer.py %s` on %s, %.0f s, median of %d runs per corpus and filter "
          "(the filters alternate, reversed every other round). %s, a private instance "
          "(bench/amavis.py: its own config, directories and port; 2 children, virus checks "
          "only, clamd CONTSCAN, D_DISCARD and a local quarantine, no notifications); the "
          "package's own daemon: %s. One clamd (the project's test database, MaxThreads 8) "
          "for both, RELOADed before every timed run (%d reloads, the warm-up's included); one SMTP sink (bench/sink.py) for "
          "both. amavisd-new takes the corpus over %d SMTP connections; spoold (clamd mode, "
          "a fresh spool per run, connector-smtp to the sink) by `spoolctl inject`, %d at a "
          "time, or by a file drop. Clock: from the first message offered until every clean "
          "one is in the sink, every EICAR one in the filter's quarantine and (amavisd) "
          "every SMTP reply is in. Ratio: spoold's msg/s over amavisd-new's, the median of "
          "the per-round ratios. CPU ms per message from /proc: filter = amavisd's process "
          "tree, or spoold's tree plus the `spoolctl inject` processes; kernel = kernel "
          "threads + irq + softirq, machine-wide. Disk MB: sectors written to the work "
          "directory's disk from a `sync` before to a `sync` after the run (everyone's "
          "writes, the shared machine's included); own MB: what the filter's processes "
          "(and spoold's intake: spoolctl or the drop) made dirty, from /proc/<pid>/io. "
          "Other load: everything else the machine ran meanwhile, in cores (other helpers' "
          "builds and tests on this shared 2-core machine; everything here ran under "
          "`nice`). Arrived: delivered to the sink / quarantined / duplicates.\n\n"
          % (" ".join(sys.argv[1:]), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             elapsed, args.runs, version, packaged, brun.COLD["n"], CONNS, CONNS))
    s += brun.table(["corpus", "filter", "msg/s", "ratio", "filter ms/msg", "clamd ms/msg",
                     "sink ms/msg", "kernel ms/msg", "disk MB", "own MB", "other load cores",
                     "arrived"], rows)
    if goal_rows:
        s += "\n| status | goal (issue 19) |\n|---|---|\n" + "\n".join(goal_rows) + "\n"
    return s


if __name__ == "__main__":
    sys.exit(main())
