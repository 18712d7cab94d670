"""A tiny SMTP server on 127.0.0.1 for connector tests: records every transaction and
answers with scripted reply codes (e.g. first a 451 to DATA, then 250).

    s = SmtpSink(data_replies=["451 try later", "250 ok"])   # cycles through the list
    s.port; s.messages -> [(mail_from, [rcpts], data_bytes)]; s.stop()
    s.lines -> every command line received, raw bytes (what was on the wire)
    s.connections -> how many connections were accepted (one session each)
    SmtpSink(unix_path="/dir/smtp")   # listens on a Unix socket instead (s.port is None)
    SmtpSink(smtputf8=True)           # offers SMTPUTF8 in its EHLO reply
"""
import os
import socket
import threading


class SmtpSink:
    def __init__(self, data_replies=("250 2.0.0 ok",), rcpt_reply="250 2.1.5 ok",
                 unix_path=None, smtputf8=False):
        self.data_replies = list(data_replies)
        self.rcpt_reply = rcpt_reply
        self.smtputf8 = smtputf8
        self.messages = []
        self.lines = []
        self.attempts = 0
        self.connections = 0
        self.unix_path = unix_path
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            os.chmod(unix_path, 0o666)  # any stage user may connect, as to clamd, /dev/log
            self.port = None
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        if not unix_path:
            self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                self._session(c)
            except OSError:
                pass
            finally:
                c.close()

    def _session(self, c):
        c.settimeout(10)
        f = c.makefile("rb")

        def say(line):
            c.sendall(line.encode() + b"\r\n")

        say("220 sink ESMTP")
        mail, rcpts = None, []
        while True:
            line = f.readline()
            if not line:
                return
            self.lines.append(line)
            cmd = line.strip().decode(errors="replace")
            up = cmd.upper()
            if up.startswith(("EHLO", "HELO")):
                ext = "250-8BITMIME\r\n250 SMTPUTF8" if self.smtputf8 else "250 8BITMIME"
                say("250-sink\r\n" + ext if up.startswith("EHLO") else "250 sink")
            elif up.startswith("MAIL FROM:"):
                mail, rcpts = cmd[10:].strip(), []
                say("250 2.1.0 ok")
            elif up.startswith("RCPT TO:"):
                rcpts.append(cmd[8:].strip())
                say(self.rcpt_reply)
            elif up == "DATA":
                say("354 go ahead")
                data = b""
                while True:
                    l = f.readline()
                    if not l or l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b"..") else l
                reply = self.data_replies[min(self.attempts, len(self.data_replies) - 1)]
                self.attempts += 1
                if reply.startswith("250"):
                    self.messages.append((mail, rcpts, data))
                say(reply)
            elif up == "QUIT":
                say("221 bye")
                return
            elif up == "RSET":
                say("250 ok")
            else:
                say("502 unknown")

    def stop(self):
        self._stop.set()
        self.sock.close()
        self.th.join()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
