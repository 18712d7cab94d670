"""A private amavisd-new for the benchmarks (issue 19): bench/peer.py feeds it by SMTP,
bench/mta.py puts it behind Postfix as Debian's README.postfix does.

    state = amavis.installed()            # None when installed, else why it is not
    note = amavis.quiet_packaged()        # stop the package's own amavisd; what was done
    a = amavis.Amavis(base, port_in, forward="smtp:[127.0.0.1]:PORT", clamd_sock=PATH)
    a.start(); a.passed_blocked(); a.quarantined(); a.stop()

Debian's amavisd-new starts (and enables) its own daemon on install, reading
/etc/amavis/conf.d and listening on 127.0.0.1:10024. The benches never use it: each runs
its own instance with its own config (`amavisd -c FILE foreground`), its own directories
under the run's work directory and its own ports, so the measured set-up is the same on
every machine whatever the local /etc/amavis says. The settings are those of the peer
benchmark this was compared with first: two child processes, virus checks only (spam,
banned files and headers bypassed), ClamAV's clamd asked with CONTSCAN on its Unix
socket, infected mail discarded (D_DISCARD) and kept in a local quarantine, no
notifications, no BerkeleyDB/SQL/DKIM, log level 0 to a file.

Only packaged, trusted programs run here (/usr/sbin/amavisd, systemctl, the init script),
with argument lists built from our own paths; nothing from a message reaches them.
"""
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

AMAVISD = "/usr/sbin/amavisd"
PACKAGED_PID = "/var/run/amavis/amavisd.pid"
INIT_SCRIPT = "/etc/init.d/amavis"

CONF = """# written by bench/amavis.py: a private amavisd-new for the spoold benchmarks
use strict;
$MYHOME   = '{home}';
$TEMPBASE = '{home}/tmp';
$ENV{{TMPDIR}} = $TEMPBASE;
$db_home  = '{home}/db';
$helpers_home = '{home}/var';
$lock_file = '{home}/var/amavisd.lock';
$pid_file  = '{home}/var/amavisd.pid';
$daemon_user  = 'amavis';
$daemon_group = 'amavis';
$ENV{{PATH}} = $path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin';
$file = 'file';
$mydomain   = 'bench.example';
$myhostname = 'amavis.bench.example';
@local_domains_maps = ( ['.'] );

# Two children, as many as the two cores (and the two SMTP connections of bench/peer.py).
$max_servers  = {servers};
$max_requests = 20;
$child_timeout = 8*60;

# One log line per message ("Passed CLEAN", "Blocked INFECTED"): the harness counts them.
$DO_SYSLOG = 0;
$LOGFILE   = '{home}/var/amavis.log';
$log_level = {loglevel};
$log_recip_templ = undef;

# Virus checks only: no BerkeleyDB cache, no SQL, no DKIM, no spam/banned/header checks.
$enable_db = 0;
$enable_global_cache = 0;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
@bypass_spam_checks_maps   = (1);
@bypass_banned_checks_maps = (1);
@bypass_header_checks_maps = (1);
@bypass_virus_checks_maps  = (0);

$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$forward_method = '{forward}';
$notify_method  = $forward_method;

# Infected: discarded, kept in the local quarantine (as spoold's quarantine/), nobody told.
$final_virus_destiny = D_DISCARD;
$QUARANTINEDIR = '{home}/virusmails';
$virus_quarantine_method = 'local:virus-%m';
$virus_admin = undef;

@av_scanners = (
  ['ClamAV-clamd',
    \\&ask_daemon, ["CONTSCAN {{}}\\n", '{clamd}'],
    qr/\\bOK$/m, qr/\\bFOUND$/m,
    qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ],
);
@av_scanners_backup = ();
1;
"""


def installed():
    """None when amavisd-new is installed; else a sentence saying why it is not usable."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "amavisd-new"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if "install ok installed" not in r.stdout:
        return ("amavisd-new is not installed on this machine (a bench-only package: "
                "`sh conf/deps.sh --bench`, which `make bench-peer` and `make bench-mta` run)")
    if not os.access(AMAVISD, os.X_OK):
        return "amavisd-new is installed but %s is missing" % AMAVISD
    try:
        pwd.getpwnam("amavis")
    except KeyError:
        return "amavisd-new is installed but its user amavis is missing"
    return None


def version():
    r = subprocess.run([AMAVISD, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"


def _is_amavisd(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"amavisd" in f.read()
    except OSError:
        return False


def quiet_packaged():
    """Stop the packaged amavisd so that it takes no CPU or memory from the measured
    systems (it would sit idle on 127.0.0.1:10024; ours use ports of their own). With
    systemd running: `systemctl stop` and a runtime mask (undone by a reboot, so a machine
    that wants the service keeps it). Without systemd (a container: systemctl exists but
    cannot talk to PID 1), the init script's stop, then SIGTERM to the pid in the
    package's pid file if that process is still an amavisd. Returns what was done."""
    done = []
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        for cmd in (["systemctl", "stop", "amavis.service"],
                    ["systemctl", "mask", "--runtime", "amavis.service"]):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=120)
            done.append("`%s`: %s" % (" ".join(cmd), "ok" if r.returncode == 0
                                       else "exit %d %s" % (r.returncode, r.stdout.strip()[:200])))
        return "; ".join(done)
    pid = None
    try:
        with open(PACKAGED_PID) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if pid is None or not _is_amavisd(pid):
        return "no systemd; the packaged amavisd is not running (%s)" % PACKAGED_PID
    if os.access(INIT_SCRIPT, os.X_OK):
        r = subprocess.run([INIT_SCRIPT, "stop"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        done.append("`%s stop`: exit %d" % (INIT_SCRIPT, r.returncode))
    for last in (False, True):
        deadline = time.monotonic() + 10
        while _is_amavisd(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _is_amavisd(pid):
            break
        if last:
            raise RuntimeError("the packaged amavisd (pid %d) does not stop" % pid)
        # Checked just above to be an amavisd, the package's (its pid file).
        os.kill(pid, signal.SIGTERM)
        done.append("SIGTERM to %d" % pid)
    return "no systemd; stopped the packaged amavisd: " + ", ".join(done)


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Amavis:
    """One private amavisd-new: SMTP in on 127.0.0.1:port, clean mail out to forward."""

    def __init__(self, base, port, forward, clamd_sock, servers=2, loglevel=0):
        self.base, self.port = base, port
        self.etc = os.path.join(base, "etc")
        self.home = os.path.join(base, "home")
        self.conf = os.path.join(self.etc, "amavisd.conf")
        self.logfile = os.path.join(self.home, "var", "amavis.log")
        self.qdir = os.path.join(self.home, "virusmails")
        self.proc = None
        # amavisd reads its config and works as its user amavis: every directory above
        # base must let others through, or it fails later with a bare "Permission denied".
        d = os.path.dirname(os.path.abspath(base))
        while True:
            if not os.stat(d).st_mode & 0o001:
                raise RuntimeError("%s is not searchable by others: the user amavis cannot "
                                   "reach %s (chmod o+x, or another work directory)" % (d, base))
            if d == os.path.dirname(d):
                break
            d = os.path.dirname(d)
        # amavisd refuses a config that the amavis user could change: root's, in a
        # directory only root writes (a private one, so no other config is read).
        os.makedirs(self.etc)
        os.chmod(base, 0o755)
        os.chmod(self.etc, 0o755)
        text = CONF.format(home=self.home, port=port, forward=forward, clamd=clamd_sock,
                           loglevel=loglevel,
                           servers=servers)
        with open(self.conf, "w") as f:
            f.write(text)
        os.chmod(self.conf, 0o644)
        # Its work directories belong to amavis, who writes the mail there for clamd.
        am = pwd.getpwnam("amavis")
        for d in ("", "tmp", "var", "db", "virusmails"):
            p = os.path.join(self.home, d)
            os.makedirs(p, exist_ok=True)
            os.chown(p, am.pw_uid, am.pw_gid)
        os.chmod(self.home, 0o750)

    def start(self, timeout=120):
        out = open(os.path.join(self.base, "amavisd.out"), "ab")
        # foreground: the process we started is Net::Server's parent of the children,
        # so its pid is the tree the CPU meter follows and the one SIGTERM stops.
        self.proc = subprocess.Popen([AMAVISD, "-c", self.conf, "foreground"], stdout=out,
                                     stderr=out, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("amavisd did not come up on port %d:\n%s"
                                   % (self.port, self.log()))
            time.sleep(0.2)
        return self

    def log(self):
        res = ""
        for p in (os.path.join(self.base, "amavisd.out"), self.logfile):
            try:
                with open(p, errors="replace") as f:
                    res += f.read()[-2000:]
            except FileNotFoundError:
                pass
        return res

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except FileNotFoundError:
            return 0

    def passed_blocked(self, offset=0):
        """(Passed CLEAN, Blocked INFECTED + discarded, other lines) in the log since
        offset."""
        try:
            with open(self.logfile, errors="replace") as f:
                f.seek(offset)
                tail = f.read()
        except FileNotFoundError:
            return 0, 0, 0
        lines = tail.splitlines()
        passed = sum(1 for ln in lines if "Passed CLEAN {" in ln)
        blocked = sum(1 for ln in lines if re.search(r"Blocked INFECTED \(.*\{Discarded", ln))
        return passed, blocked, len(lines) - passed - blocked

    def quarantined(self):
        try:
            return sum(1 for e in os.scandir(self.qdir) if e.name.startswith("virus-"))
        except FileNotFoundError:
            return 0

    def move_quarantine(self, dest):
        """Rename the quarantined mail away (same filesystem) so each run counts its own."""
        os.makedirs(dest, exist_ok=True)
        for e in os.listdir(self.qdir):
            os.rename(os.path.join(self.qdir, e), os.path.join(dest, e))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
