"""A relay between the scanner-runner and a real clamd that cuts big requests on purpose.

    from lib.clamdproxy import ClamdProxy

    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as cd, \\
         ClamdProxy(cd.unix_addr, unix=True, mode="fildes-close") as px:
        px.addr            # "unix:/.../proxy.sock" (or "tcp:127.0.0.1:PORT" with unix=False)
        ...                # point a clamd scanner at px.addr
        px.cuts()          # [{"mode", "kind", ...}] one per request it cut, in order
        px.mode = "pass"   # from now on every request goes to clamd whole

It speaks enough of clamd's protocol to know where a request is: z-commands
(zIDSESSION, zEND, zPING, zVERSION, ...), zINSTREAM's length-prefixed chunks, and
zFILDES's descriptor (SCM_RIGHTS, passed on to clamd). Small requests always go to
clamd whole, so the canary and small mail are scanned for real; a request is big when
its stream passes cut_at bytes (zINSTREAM) or its file has at least big bytes (zFILDES),
and a big one is cut as the mode says:

    pass             relay everything (clamd's own replies come back verbatim)
    instream-close   forward the command and the first cut_at bytes of the stream, stop
                     reading for settle seconds, then close the connection with the
                     runner's later bytes unread (a reset)
    instream-error   the same, but before the close reply "INSTREAM size limit exceeded.
                     ERROR" (with the request id in a session, as clamd does), half-close
                     and read to the runner's close
    fildes-close     take the command and the descriptor, then close without a reply
    fildes-early     take the command, look at the descriptor without taking it
                     (MSG_PEEK, to see its size) and close with it unread (a reset)
    stall            never reply: a stream is no longer read after cut_at bytes for
                     stall_for seconds, a descriptor is taken and what follows is read
                     and dropped; then the connection is held until the runner hangs up
                     (a FILDES cut records how long that took: "held")

After the first cut_at bytes nothing of a stream is read until the cut: a stream larger
than the socket buffers hold (several MB on loopback; the proxy's own receive buffer is
kept small) then leaves the runner blocked in a send when the cut comes, which is the
case clamd.c's clamd_send_failed handles. A FILDES request is two small sends that the
runner has made before any peer can react: its cuts are seen in the reply read.

Every wait is bounded (socket timeouts, and a stall gives up after max_stall seconds);
stop() closes everything. The proxy runs as the test's user: for the runner's peer
check it is a clamd of that user.
"""

import os
import select
import socket
import struct
import threading
import time

from .clamd import SUN_PATH_MAX, Stoppable, connect

MODES = ("pass", "instream-close", "instream-error", "fildes-close", "fildes-early", "stall")
_LIMIT_REPLY = b"INSTREAM size limit exceeded. ERROR"
_FD_ANC = socket.CMSG_SPACE(16 * struct.calcsize("i"))


class _Closed(Exception):
    """The client hung up (or the proxy is stopping)."""


class _Conn:
    """One client connection and its upstream: what the two threads share."""

    def __init__(self, c):
        self.c = c
        self.up = None
        self.muted = False  # set before a cut: clamd's side is never relayed again


class ClamdProxy(Stoppable):
    def __init__(self, upstream, unix=True, path=None, mode="pass", big=256 * 1024,
                 cut_at=150000, settle=0.5, stall_for=10.0, max_stall=120.0):
        """upstream: the real clamd ("unix:/path" or "tcp:host:port"). unix: listen on
        path (default: a fresh directory's proxy.sock), else on a free 127.0.0.1 port."""
        assert mode in MODES, mode
        self.upstream = upstream
        self.mode = mode
        self.big = big
        self.cut_at = cut_at
        self.settle = settle
        self.stall_for = stall_for
        self.max_stall = max_stall
        self._cuts = []
        self._passed = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._socks = set()
        if unix:
            if path is None:
                import lib as harness
                path = os.path.join(harness.tmpdir("proxy"), "proxy.sock")
            self.path = os.path.abspath(path)
            if len(self.path.encode()) > SUN_PATH_MAX:
                raise ValueError("socket path too long: %s" % self.path)
            self._ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._ls.bind(self.path)
            # As clamd's LocalSocketMode 666: a runner of another user (the separated
            # pass) may connect; whom it trusts is its own peer check.
            os.chmod(self.path, 0o666)
            self.addr = "unix:" + self.path
        else:
            self.path = None
            self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # A small receive buffer (set before listen, so the window is agreed on it):
            # less of a stream is buffered here, and the runner blocks sooner.
            self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            self._ls.bind(("127.0.0.1", 0))
            self.addr = "tcp:127.0.0.1:%d" % self._ls.getsockname()[1]
        self._ls.listen(64)
        self._ls.settimeout(0.05)
        t = threading.Thread(target=self._accept_loop, name="ClamdProxy", daemon=True)
        t.start()
        self._threads.append(t)

    # ---- what happened ---------------------------------------------------------------
    def cuts(self):
        """One dict per request that was cut: mode, kind (instream, fildes), size (the
        file's, fildes) or forwarded (stream bytes clamd got, instream), held (seconds
        the stall held the connection until the runner hung up, stall only)."""
        with self._lock:
            return [dict(c) for c in self._cuts]

    def passed(self):
        """{command: count} of the requests relayed to clamd whole."""
        with self._lock:
            return dict(self._passed)

    def _record_cut(self, **kw):
        with self._lock:
            self._cuts.append(kw)
        return kw

    def _record_pass(self, cmd):
        with self._lock:
            self._passed[cmd] = self._passed.get(cmd, 0) + 1

    # ---- serving -----------------------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            t = threading.Thread(target=self._serve, args=(c,), name="ClamdProxyConn",
                                 daemon=True)
            t.start()
            with self._lock:
                self._threads.append(t)

    def _track(self, s):
        with self._lock:
            self._socks.add(s)
        return s

    def _close(self, s):
        if s is None:
            return
        with self._lock:
            self._socks.discard(s)
        try:
            s.close()
        except OSError:
            pass

    def _serve(self, c):
        conn = _Conn(self._track(c))
        c.settimeout(0.5)
        try:
            # Sends to clamd wait at most 30 s (clamd reads a stream as it comes).
            conn.up = self._track(connect(self.upstream, timeout=30.0))
            pump = threading.Thread(target=self._pump, args=(conn,), name="ClamdProxyPump",
                                    daemon=True)
            pump.start()
            self._relay(conn)
        except (_Closed, OSError, struct.error):
            pass
        finally:
            conn.muted = True
            self._close(conn.up)
            self._close(conn.c)

    def _pump(self, conn):
        """clamd to the runner, verbatim, until clamd closes (then the runner sees the
        end too) or a cut mutes it."""
        up = conn.up
        while not self._stop.is_set() and not conn.muted:
            # select, not a timeout on up: the other thread sends on it, and a socket's
            # timeout is shared by both (a send would time out while clamd is busy).
            try:
                ready, _, _ = select.select([up], [], [], 0.5)
                if not ready:
                    continue
                b = up.recv(65536)
            except (OSError, ValueError):
                return
            if not b or conn.muted:
                break
            try:
                conn.c.sendall(b)
            except OSError:
                return
        if not conn.muted:
            try:
                conn.c.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _wait(self, fn):
        """fn() until it does not time out; _Closed when stopping."""
        while True:
            if self._stop.is_set():
                raise _Closed()
            try:
                return fn()
            except socket.timeout:
                continue

    def _recv_exact(self, c, n):
        out = b""
        while len(out) < n:
            b = self._wait(lambda: c.recv(min(n - len(out), 65536)))
            if not b:
                raise _Closed()
            out += b
        return out

    def _command(self, c):
        """The next z-command, without its NUL; None at a clean end (the client closed
        between requests). Read byte by byte: never past the command into a byte that
        carries a descriptor (a plain recv would drop it)."""
        cmd = b""
        while not cmd.endswith(b"\0"):
            b = self._wait(lambda: c.recv(1))
            if not b:
                if cmd:
                    raise _Closed()
                return None
            cmd += b
            if len(cmd) > 64:
                raise _Closed()  # not clamd's protocol: drop the connection
        return cmd[:-1]

    def _relay(self, conn):
        session, rid = False, 1
        while True:
            cmd = self._command(conn.c)
            if cmd is None:
                return
            if cmd == b"zINSTREAM":
                done = self._instream(conn, "%d: " % rid if session else "")
            elif cmd == b"zFILDES":
                done = self._fildes(conn)
            else:
                if cmd == b"zIDSESSION":
                    session = True
                conn.up.sendall(cmd + b"\0")
                self._record_pass(cmd.decode(errors="replace"))
                if cmd not in (b"zIDSESSION", b"zEND"):
                    rid += 1
                continue
            if done:
                return
            rid += 1

    def _drop(self, conn):
        """Close both sides now (what the runner sent last stays unread)."""
        conn.muted = True
        self._close(conn.up)
        self._close(conn.c)

    def _pause(self, secs):
        """Wait secs seconds (less if the proxy stops), reading nothing."""
        self._stop.wait(secs)

    def _hold(self, conn, keep_upstream=False):
        """A stall: nothing more goes to clamd and nothing of this request comes back;
        read and discard what the runner sends until it hangs up. keep_upstream: clamd's
        replies to requests sent before (a pipelined session) still come back, as from a
        clamd wedged on this one file. Returns how long the runner took (seconds)."""
        if not keep_upstream:
            conn.muted = True
            self._close(conn.up)
        t0 = time.monotonic()
        c = conn.c
        while time.monotonic() - t0 < self.max_stall and not self._stop.is_set():
            try:
                b = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not b:
                break
        return round(time.monotonic() - t0, 2)

    def _instream(self, conn, prefix):
        """One zINSTREAM request. True when the connection ended here."""
        c, up = conn.c, conn.up
        mode = self.mode
        up.sendall(b"zINSTREAM\0")
        sent = 0
        while True:
            hdr = self._recv_exact(c, 4)
            (n,) = struct.unpack("!L", hdr)
            if n == 0:
                up.sendall(hdr)
                self._record_pass("zINSTREAM")
                return False
            data = self._recv_exact(c, n)
            if mode in ("instream-close", "instream-error", "stall") and sent + n > self.cut_at:
                # clamd gets the command and exactly cut_at bytes of stream (the last chunk
                # header announces more than follows): a stream never ended.
                up.sendall(hdr + data[:self.cut_at - sent])
                cut = dict(mode=mode, kind="instream", forwarded=self.cut_at)
                # Recorded before the runner can see anything of the cut.
                self._record_cut(**cut)
                conn.muted = True
                self._close(conn.up)
                # Nothing more is read: a stream larger than what the socket buffers hold
                # (several MB on loopback) leaves the runner blocked in a send, and the
                # cut comes in the middle of it.
                self._pause(self.stall_for if mode == "stall" else self.settle)
                if mode == "instream-error":
                    c.sendall(prefix.encode() + _LIMIT_REPLY + b"\0")
                    # Half-close, then read to the runner's close: the refusal itself
                    # reaches it whole (a close with its bytes unread would reset the
                    # connection, and a reset may discard the reply before it is read).
                    c.shutdown(socket.SHUT_WR)
                    self._hold(conn)
                elif mode == "stall":
                    self._hold(conn)
                # A close with the runner's bytes unread: the runner sees a reset.
                self._drop(conn)
                return True
            up.sendall(hdr + data)
            sent += n

    def _fd_byte(self, c, flags=0):
        """The byte that carries zFILDES's descriptor: (data, [fds])."""
        data, anc, _, _ = self._wait(lambda: c.recvmsg(1, _FD_ANC, flags))
        if not data:
            raise _Closed()
        fds = []
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                k = len(blob) // struct.calcsize("i")
                fds.extend(struct.unpack("%di" % k, blob[:k * struct.calcsize("i")]))
        return data, fds

    @staticmethod
    def _size(fds):
        """The size of the first descriptor's file, -1 without one; closes them all."""
        size = -1
        for i, fd in enumerate(fds):
            try:
                if i == 0:
                    size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        return size

    def _fildes(self, conn):
        """One zFILDES request. True when the connection ended here."""
        c = conn.c
        mode = self.mode
        if mode == "fildes-early":
            # A peek installs copies of the descriptors in this process: closed at once.
            _, fds = self._fd_byte(c, socket.MSG_PEEK)
            size = self._size(fds)
            if size >= self.big:
                # Recorded first: whoever sees the close may look at cuts() at once.
                self._record_cut(mode=mode, kind="fildes", size=size)
                self._drop(conn)
                return True
        data, fds = self._fd_byte(c)
        if mode in ("fildes-close", "stall") and fds and os.fstat(fds[0]).st_size >= self.big:
            size = self._size(fds)
            cut = dict(mode=mode, kind="fildes", size=size)
            if mode == "stall":
                cut["held"] = self._hold(conn, keep_upstream=True)
            # Recorded before the close: whoever sees it may look at cuts() at once.
            self._record_cut(**cut)
            self._drop(conn)
            return True
        try:
            conn.up.sendall(b"zFILDES\0")
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fds[0]))] if fds \
                else []
            conn.up.sendmsg([data], anc)
        finally:
            for fd in fds:
                os.close(fd)
        self._record_pass("zFILDES")
        return False

    # ---- the end -------------------------------------------------------------------------
    def stop(self):
        """Stop accepting, close every connection, remove the socket file. Idempotent."""
        self._stop.set()
        try:
            self._ls.close()
        except OSError:
            pass
        with self._lock:
            socks, self._socks = list(self._socks), set()
            threads = list(self._threads)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in threads:
            t.join(5)
        self.remove_socket()
