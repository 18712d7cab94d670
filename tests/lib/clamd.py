"""clamd fixtures: a real clamd on private sockets, and fake clamd servers for fault tests.

    from lib.clamd import Clamd, FakeClamdSilent, FakeClamdCloser, ping, instream

    with Clamd(harness.tmpdir("clamd"), harness.sigdir(), tcp=True) as cd:
        cd.unix_addr          # "unix:/.../clamd.sock"
        cd.tcp_addr           # "tcp:127.0.0.1:PORT" (None without tcp=True)
        instream(cd.unix_addr, data)  # -> "stream: Spoold.Test.EICAR.NDB.UNOFFICIAL FOUND"

    silent = FakeClamdSilent(path)   # accepts, never answers; .connections counts accepts
    closer = FakeClamdCloser(path)   # reads a few bytes, then closes the connection
    ...; silent.stop()               # or use them as context managers

Addresses use the same syntax as the spoold config: "unix:/path" or "tcp:host:port".
Everything here has bounded waits; nothing blocks forever.
"""

import atexit
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

CLAMD = "/usr/sbin/clamd"
SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux

_live = set()  # running Clamd instances, stopped at exit if a test forgot


def _stop_all():
    for c in list(_live):
        try:
            c.stop()
        except Exception:
            pass


atexit.register(_stop_all)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(addr, timeout=5.0):
    """Connect to "unix:/path" or "tcp:host:port"; returns a socket with timeout set."""
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = addr[5:]
    elif addr.startswith("tcp:"):
        host, _, port = addr[4:].rpartition(":")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host.strip("[]"), int(port))
    else:
        raise ValueError("bad clamd address %r (want unix:/path or tcp:host:port)" % addr)
    s.settimeout(timeout)
    try:
        s.connect(target)
    except BaseException:
        s.close()
        raise
    return s


def _recv_reply(s):
    """Read a z-command reply up to its NUL terminator (or EOF)."""
    buf = b""
    while not buf.endswith(b"\0"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.rstrip(b"\0").decode(errors="replace")


def command(addr, cmd, timeout=5.0):
    """Send one z-command (e.g. "PING", "VERSION") and return the reply text."""
    with connect(addr, timeout) as s:
        s.sendall(b"z" + cmd.encode() + b"\0")
        return _recv_reply(s)


def ping(addr, timeout=2.0):
    """True if clamd at addr answers zPING with PONG."""
    try:
        return command(addr, "PING", timeout) == "PONG"
    except OSError:
        return False


def instream(addr, data, chunk=8192, timeout=30.0):
    """Scan data with zINSTREAM and return clamd's reply, for example
    "stream: OK", "stream: NAME FOUND" or "INSTREAM size limit exceeded. ERROR".
    If clamd closes early (size limit), the reply it sent before closing is returned."""
    with connect(addr, timeout) as s:
        s.sendall(b"zINSTREAM\0")
        try:
            for i in range(0, len(data), chunk):
                part = data[i:i + chunk]
                s.sendall(struct.pack("!L", len(part)) + part)
            s.sendall(struct.pack("!L", 0))
        except (BrokenPipeError, ConnectionResetError):
            pass  # clamd stopped reading; its reply (if any) is still in our buffer
        try:
            return _recv_reply(s)
        except ConnectionResetError:
            return ""


class Stoppable:
    """A server of the tests: `with X(...) as x:` stops it at the end of the block, and
    remove_socket() takes away the socket file it listened on, if any."""

    path = None

    def stop(self):
        raise NotImplementedError

    def remove_socket(self):
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class Clamd(Stoppable):
    """A real /usr/sbin/clamd with a private config, sockets and log, loading only dbdir.

    Clamd(tmpdir, dbdir, tcp=False, stream_max_length="10M", extra=None,
          start=True, timeout=30)

    tmpdir  directory for clamd.conf, clamd.sock, clamd.log, clamd.out (clamd's own
            stdout/stderr) and clamd's TemporaryDirectory; created if missing.
    dbdir   DatabaseDirectory, e.g. harness.sigdir() (the conf/mksigs.sh output).
    tcp     also listen on TCPSocket <free port> / TCPAddr 127.0.0.1.
    stream_max_length  StreamMaxLength: int (bytes) or a clamd SIZE string ("10M").
    extra   dict of further clamd.conf options, e.g. {"ReadTimeout": 5}; a value of
            None removes an option.
    timeout seconds to wait for PONG at start (and for TCP too when enabled).

    Attributes: .conf_path, .socket_path, .log_path, .out_path, .unix_addr,
    .tcp_addr (None without tcp), .port, .proc, .pid.
    Methods: .start(), .stop(), .kill(sig), .running(), .ping(), .scan(data),
    .log() (log + stdout text, for failure messages).
    """

    def __init__(self, tmpdir, dbdir, tcp=False, stream_max_length="10M", extra=None,
                 start=True, timeout=30):
        self.tmpdir = os.path.abspath(tmpdir)
        self.dbdir = os.path.abspath(dbdir)
        self.tcp = tcp
        self.stream_max_length = stream_max_length
        self.extra = dict(extra or {})
        self.timeout = timeout
        self.conf_path = os.path.join(self.tmpdir, "clamd.conf")
        self.socket_path = os.path.join(self.tmpdir, "clamd.sock")
        self.log_path = os.path.join(self.tmpdir, "clamd.log")
        self.out_path = os.path.join(self.tmpdir, "clamd.out")
        self.unix_addr = "unix:" + self.socket_path
        self.tcp_addr = None
        self.port = None
        self.proc = None
        if len(self.socket_path.encode()) > SUN_PATH_MAX:
            raise ValueError("clamd socket path too long for a unix socket (%d > %d bytes): %s"
                             % (len(self.socket_path.encode()), SUN_PATH_MAX, self.socket_path))
        if not os.access(CLAMD, os.X_OK):
            raise RuntimeError("%s not found: install the Debian package clamav-daemon" % CLAMD)
        if start:
            self.start()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def options(self):
        """The clamd.conf options as an ordered list of (key, value)."""
        o = {
            "Foreground": "yes",
            "LocalSocket": self.socket_path,
            "FixStaleSocket": "yes",
            "DatabaseDirectory": self.dbdir,
            "TemporaryDirectory": self.tmpdir,
            "LogFile": self.log_path,
            "LogFileUnlock": "yes",
            "LogTime": "yes",
            "StreamMaxLength": str(self.stream_max_length),
            # Database reloads only when the test asks (RELOAD), never behind its back.
            "SelfCheck": "3600",
            "MaxThreads": "10",
            "ReadTimeout": "30",
            "CommandReadTimeout": "10",
            "IdleTimeout": "30",
            # As spoold requires (spoold.conf(5)): an encrypted archive or one over the
            # limits is a FOUND, not an OK. extra={"AlertEncrypted": None, ...} drops them.
            "AlertEncrypted": "yes",
            "AlertExceedsMax": "yes",
        }
        # No PidFile and no User: clamd keeps the identity it was started with (root in
        # CI) and writes nothing outside tmpdir.
        if self.tcp:
            o["TCPSocket"] = str(self.port)
            o["TCPAddr"] = "127.0.0.1"
        for k, v in self.extra.items():
            if v is None:
                o.pop(k, None)
            else:
                o[k] = str(v)
        return list(o.items())

    def _write_conf(self):
        text = "# written by tests/lib/clamd.py\n" + "".join(
            "%s %s\n" % (k, v) for k, v in self.options())
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.conf_path)

    def start(self):
        if self.proc is not None:
            raise RuntimeError("clamd already started")
        os.makedirs(self.tmpdir, exist_ok=True)
        # A port taken by someone else between free_port() and clamd's bind: clamd logs
        # "TCP: Cannot bind" and carries on with the unix socket only; retry on a new port.
        for attempt in range(3 if self.tcp else 1):
            if self.tcp:
                self.port = free_port()
                self.tcp_addr = "tcp:127.0.0.1:%d" % self.port
            why = self._start_once()
            if why is None:
                return self
            if why != "bind":
                break
        raise RuntimeError("clamd did not start (config %s): %s\n%s"
                           % (self.conf_path, why, self.log()[-3000:]))

    def _log_size(self):
        try:
            return os.path.getsize(self.out_path)
        except FileNotFoundError:
            return 0

    def _start_once(self):
        """Start clamd and wait for PONG: None on success, else why it failed ("bind"
        when the TCP port was taken); clamd is stopped on failure."""
        self._write_conf()
        argv = [CLAMD, "-c", self.conf_path]
        # With setpriv, clamd gets SIGKILL if the test process dies without stop().
        # (The death signal follows the *thread* that started clamd: start it from the
        # main thread, or from a thread that outlives it.)
        setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL"] + argv
        out_start = self._log_size()
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, close_fds=True)
        _live.add(self)
        deadline = time.monotonic() + self.timeout
        addrs = [self.unix_addr] + ([self.tcp_addr] if self.tcp else [])
        while True:
            if self.proc.poll() is not None:
                why = "clamd exited with status %d" % self.proc.returncode
                break
            if self.tcp:
                with open(self.out_path, "rb") as f:
                    f.seek(out_start)
                    if b"TCP: Cannot bind" in f.read():
                        why = "bind"
                        break
            if all(ping(a, timeout=1.0) for a in addrs):
                return None
            if time.monotonic() >= deadline:
                why = "no PONG within %ss" % self.timeout
                break
            time.sleep(0.05)
        self.stop()
        return why

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def ping(self, timeout=2.0):
        return ping(self.unix_addr, timeout)

    def scan(self, data, addr=None, **kw):
        """zINSTREAM data to this clamd (unix socket unless addr given); returns the reply."""
        return instream(addr or self.unix_addr, data, **kw)

    def kill(self, sig=signal.SIGKILL):
        """Send sig to clamd (e.g. to simulate a crash); use stop() to clean up after."""
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, timeout=10):
        """SIGTERM, wait up to timeout seconds, then SIGKILL; always reaps. Idempotent.
        Returns clamd's exit status (None if it was not running)."""
        p, self.proc = self.proc, None
        _live.discard(self)
        if p is None:
            return None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return p.returncode

    def log(self):
        """clamd's log file and its stdout/stderr, as text (for failure messages)."""
        parts = []
        for path in (self.log_path, self.out_path):
            try:
                with open(path, "rb") as f:
                    parts.append(f.read().decode(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def __repr__(self):
        return "<Clamd pid=%s %s %s>" % (self.pid, self.unix_addr, self.tcp_addr or "")


class _FakeServer(Stoppable):
    """A listening socket served by one daemon thread; subclasses define _handle(conn).

    FakeX(path) listens on the unix socket path (an existing socket file there is
    replaced); FakeX(None) listens on a free TCP port on 127.0.0.1 instead.
    Attributes: .addr ("unix:/path" or "tcp:127.0.0.1:PORT"), .unix_addr, .tcp_addr,
    .path, .port, .connections (number of accepted connections), .received (bytes read).
    """

    def __init__(self, path=None):
        self.path = os.path.abspath(path) if path else None
        self.port = None
        self.connections = 0
        self.received = 0
        self._conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.path:
            if len(self.path.encode()) > SUN_PATH_MAX:
                raise ValueError("socket path too long: %s" % self.path)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._ls.bind(self.path)
            os.chmod(self.path, 0o666)  # any stage user may connect, as to clamd, /dev/log
            self.unix_addr, self.tcp_addr = "unix:" + self.path, None
        else:
            self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._ls.bind(("127.0.0.1", 0))
            self.port = self._ls.getsockname()[1]
            self.unix_addr, self.tcp_addr = None, "tcp:127.0.0.1:%d" % self.port
        self.addr = self.unix_addr or self.tcp_addr
        self._ls.listen(64)
        self._ls.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._ls.accept()
            except socket.timeout:
                self._tick()
                continue
            except OSError:
                break
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            try:
                self._handle(conn)
            except OSError:
                pass
            self._tick()

    def _handle(self, conn):
        raise NotImplementedError

    def _tick(self):
        pass

    def stop(self):
        """Stop accepting, close every connection, remove the socket file. Idempotent."""
        self._stop.set()
        self._thread.join(5)
        try:
            self._ls.close()
        except OSError:
            pass
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass
            self._conns.clear()
        self.remove_socket()


class FakeClamdSilent(_FakeServer):
    """Accepts connections and never answers. FakeClamdSilent(path, drain=False).

    drain=False: never reads either, so a client writing a large stream blocks once the
    socket buffers fill (exercises the client's write timeout); drain=True: reads and
    discards everything (exercises the read timeout after a complete request).
    Connections stay open until stop()."""

    def __init__(self, path=None, drain=False):
        self.drain = drain
        super().__init__(path)

    def _handle(self, conn):
        conn.setblocking(False)

    def _tick(self):
        if not self.drain:
            return
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            while True:
                try:
                    b = c.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if not b:
                    break
                self.received += len(b)


class FakeClamdCloser(_FakeServer):
    """Reads up to nbytes of a request, then closes the connection without a reply.
    FakeClamdCloser(path, nbytes=64, read_timeout=0.5): read_timeout bounds the wait for
    the first nbytes (a short request is answered by closing after that time)."""

    def __init__(self, path=None, nbytes=64, read_timeout=0.5):
        self.nbytes = nbytes
        self.read_timeout = read_timeout
        super().__init__(path)

    def _handle(self, conn):
        conn.settimeout(self.read_timeout)
        got = 0
        try:
            while got < self.nbytes:
                b = conn.recv(self.nbytes - got)
                if not b:
                    break
                got += len(b)
        except OSError:
            pass
        self.received += got
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()


# ---- a rogue clamd -------------------------------------------------------------------

# The EICAR file in two halves (see lib/msgs.py): no file of this repository holds it.
_EICAR = (r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-"
          + r"ANTIVIRUS-TEST-FILE!$H+H*").encode()


class _RogueConn:
    """One connection of the rogue server: bytes and passed descriptors, as they come."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = b""
        self.fds = []

    def _fill(self):
        data, anc, _, _ = self.conn.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(blob) // 4
                self.fds.extend(struct.unpack("%di" % n, blob[:n * 4]))
        if not data:
            raise EOFError
        self.buf += data

    def take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def command(self):
        while b"\0" not in self.buf:
            if len(self.buf) > 4096:
                raise EOFError
            self._fill()
        cmd, _, self.buf = self.buf.partition(b"\0")
        return cmd.decode(errors="replace")


def _rogue_serve(conn, log):
    """Answer like clamd, but OK to everything except the 68-byte EICAR file, which is
    FOUND: the one thing a canary checks. Every request is logged."""
    rc = _RogueConn(conn)
    session, next_id = False, 1
    try:
        while True:
            cmd = rc.command()
            log("cmd %s" % cmd)
            if cmd == "zIDSESSION":
                session = True
                continue
            if cmd == "zEND":
                return
            if cmd == "zPING":
                reply = "PONG"
            elif cmd == "zVERSION":
                reply = "ClamAV 1.4.6/27000/Mon Nov 30 00:00:00 2026"
            elif cmd == "zFILDES":
                rc.take(1)
                if not rc.fds:
                    reply = "No file descriptor received. ERROR"
                else:
                    fd = rc.fds.pop(0)
                    data = b""
                    while True:
                        b = os.pread(fd, 65536, len(data))
                        if not b:
                            break
                        data += b
                    os.close(fd)
                    log("data %d" % len(data))
                    reply = "fd[%d]: %s" % (fd, "Eicar-Test-Signature FOUND"
                                           if data == _EICAR else "OK")
            elif cmd == "zINSTREAM":
                data = b""
                while True:
                    (n,) = struct.unpack("!L", rc.take(4))
                    if n == 0:
                        break
                    data += rc.take(n)
                log("data %d" % len(data))
                reply = "stream: %s" % ("Eicar-Test-Signature FOUND" if data == _EICAR else "OK")
            else:
                reply = "UNKNOWN COMMAND"
            if session:
                reply = "%d: %s" % (next_id, reply)
                next_id += 1
            conn.sendall(reply.encode() + b"\0")
            if not session:
                return
    except (EOFError, OSError, struct.error):
        return
    finally:
        conn.close()


def _rogue_main(listen, log_path):
    """Run as a process of its own (python3 clamd.py --rogue LISTEN LOG), so that it can
    run as another user: SO_PEERCRED reports who called listen()."""
    lock = threading.Lock()

    def log(line):
        with lock, open(log_path, "a") as f:
            f.write(line + "\n")

    if listen.startswith("unix:"):
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(listen[5:])
        # As clamd's LocalSocketMode 666: any scanner-runner user may connect, and the
        # refusal under test is the runner's own (the peer's uid), never the kernel's.
        os.chmod(listen[5:], 0o666)
        addr = listen
    else:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        addr = "tcp:127.0.0.1:%d" % ls.getsockname()[1]
    ls.listen(64)
    log("listening %s uid %d" % (addr, os.geteuid()))
    print("READY %s" % addr, flush=True)
    while True:
        conn, _ = ls.accept()
        log("connect")
        threading.Thread(target=_rogue_serve, args=(conn, log), daemon=True).start()


class RogueClamd(Stoppable):
    """A hostile clamd: a process that answers OK to every scan except the 68-byte EICAR
    file (FOUND), so that it passes a canary. RogueClamd(tmpdir, unix=True, user=None).

    unix    listen on tmpdir/rogue.sock (else on a free TCP port on 127.0.0.1)
    user    (name) run as this user; needs root. tmpdir is handed to that user.
    Attributes: .addr, .uid, .log_path. Methods: .connections(), .requests() (commands
    received), .stop(). A context manager."""

    def __init__(self, tmpdir, unix=True, user=None, timeout=20):
        import pwd
        import select
        import sys
        self.dir = os.path.abspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "rogue.log")
        listen = "unix:" + os.path.join(self.dir, "rogue.sock") if unix else "tcp"
        argv = [sys.executable, os.path.abspath(__file__), "--rogue", listen, self.log_path]
        self.uid = os.geteuid()
        setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
        if user is not None:
            pw = pwd.getpwnam(user)
            if os.geteuid() != 0:
                raise RuntimeError("RogueClamd(user=...) needs root")
            if not setpriv:
                raise RuntimeError("RogueClamd(user=...) needs setpriv (util-linux)")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.uid = pw.pw_uid
            argv = [setpriv, "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                    "--clear-groups", "--pdeathsig", "KILL"] + argv
        elif setpriv:
            argv = [setpriv, "--pdeathsig", "KILL"] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.dir, "rogue.err"), "ab"),
                                     close_fds=True)
        _live.add(self)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError("rogue clamd did not start: %r" % line)
        self.addr = line.split()[1]

    def _log(self):
        try:
            with open(self.log_path) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def connections(self):
        return sum(1 for l in self._log() if l == "connect")

    def requests(self):
        return [l[4:] for l in self._log() if l.startswith("cmd ")]

    def stop(self):
        p, self.proc = self.proc, None
        _live.discard(self)
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait(10)
        p.stdout.close()


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 4 and sys.argv[1] == "--rogue":
        _rogue_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: clamd.py --rogue unix:/path|tcp LOGFILE")
