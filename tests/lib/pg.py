"""A throwaway PostgreSQL cluster for the fleet tests (docs/FLEET.md): initdb and pg_ctl
from Debian's postgresql package, a Unix socket in a temp dir, no TCP. PostgreSQL refuses
to run as root, so as root the cluster belongs to a throwaway unprivileged user (spt-pg,
made once with useradd and kept, as tests/lib/privsep.py does for the stage users).

Every role logs in with a password (scram-sha-256 in pg_hba.conf) taken from a passfile
that a service file names: spoold's config names only the service, as in production."""
import glob
import os
import pwd
import shutil
import subprocess

from . import _base, cleanup, skip, tmpdir, wait_for

PG_USER = "spt-pg"
ADMIN = "fleet_admin"


def _bindir():
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    skip("PostgreSQL server binaries missing (conf/deps.sh --test installs postgresql)")


class Postgres:
    def __init__(self):
        self.bindir = _bindir()
        self.dir = tmpdir("pg")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        self.passfile = os.path.join(self.dir, "pgpass")
        self.service_file = os.path.join(self.dir, "pg_service.conf")
        self.port = 5432
        self.passwords = {ADMIN: "admin-secret"}
        self.services = {}
        self.owner = None
        os.mkdir(self.sock)
        self.preexec = None
        if os.geteuid() == 0:
            from . import privsep
            pw = privsep.user_make(PG_USER)
            os.chmod(_base(), 0o711)  # traverse only: the cluster's user reaches its dir
            for d in (self.dir, self.sock):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            uid, gid = pw.pw_uid, pw.pw_gid

            def become():
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            self.preexec = become
        pwfile = os.path.join(self.dir, "admin.pw")
        with open(pwfile, "w") as f:
            f.write(self.passwords[ADMIN] + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, uid, gid)
        self._as_pg([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", ADMIN,
                     "--pwfile", pwfile, "--auth-local=scram-sha-256", "--auth-host=reject",
                     "-E", "UTF8", "--locale=C.UTF-8"], timeout=120)
        self.start()
        cleanup(self.stop)
        self.add_service("fleet-admin", ADMIN)
        self.psql("CREATE DATABASE fleet", db="postgres")

    def _as_pg(self, argv, timeout=60):
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout, preexec_fn=self.preexec)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, "%s exited %d: %s" % (argv[0], r.returncode, out[-2000:])
        return out

    def start(self):
        self._as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
                     "-l", os.path.join(self.dir, "log"), "-o",
                     "-k %s -c listen_addresses= -p %d -c fsync=off" % (self.sock, self.port),
                     "start"], timeout=90)

    def stop(self, mode="fast"):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w",
                         "-m", mode, "stop"], timeout=90)

    def _write_auth(self):
        with open(self.passfile, "w") as f:
            for role, pw in self.passwords.items():
                f.write("%s:%d:*:%s:%s\n" % (self.sock, self.port, role, pw))
        os.chmod(self.passfile, 0o600)
        with open(self.service_file, "w") as f:
            for name, role in self.services.items():
                f.write("[%s]\nhost=%s\nport=%d\ndbname=fleet\nuser=%s\npassfile=%s\n\n"
                        % (name, self.sock, self.port, role, self.passfile))
        os.chmod(self.service_file, 0o600)
        if self.owner:
            for f in (self.passfile, self.service_file):
                os.chown(f, self.owner.pw_uid, self.owner.pw_gid)

    def give_auth(self, user):
        """The passfile and the service file belong to user from now on (0600)."""
        self.owner = pwd.getpwnam(user)
        self._write_auth()

    def add_service(self, name, role):
        self.services[name] = role
        self._write_auth()

    def add_role(self, role, service):
        """A login role with a password, in the passfile, reachable as service."""
        pw = "pw-" + role
        self.psql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, pw))
        self.passwords[role] = pw
        self.add_service(service, role)

    def psql(self, sql, db="fleet", service=None):
        """Run SQL as the admin (or as service's role); returns stdout, rows as a|b lines."""
        env = dict(os.environ, PGSERVICEFILE=self.service_file)
        conn = "service=%s" % (service or "fleet-admin")
        if db != "fleet":
            conn += " dbname=%s" % db
        r = subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t",
                            "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           stdin=subprocess.DEVNULL, timeout=60)
        if r.returncode != 0:
            raise PsqlError(r.stderr.decode(errors="replace").strip())
        return r.stdout.decode(errors="replace").strip()

    def value(self, sql, **kw):
        return self.psql(sql, **kw).strip()


class PsqlError(AssertionError):
    pass


def fleet_conf(pg, node, service, extra=""):
    """The fleet group of a node's spoold.conf."""
    return ('fleet = {\n\tnode = "%s";\n\tconninfo = "service=%s";\n'
            '\tadmin_conninfo = "service=fleet-admin";\n\tservice_file = "%s";\n'
            '\tpoll = 1;\n%s};\n' % (node, service, pg.service_file, extra))


def have_server():
    return any(os.path.exists(os.path.join(d, "initdb"))
               for d in glob.glob("/usr/lib/postgresql/*/bin")) and shutil.which("useradd")


__all__ = ["Postgres", "PsqlError", "fleet_conf", "have_server", "pwd"]
