"""A real PostgreSQL server for the tests: its own data directory in a temporary folder, a unix socket there, no TCP.

    server = PgServer.find()            # None when the Debian postgresql package is not installed
    server.start(); url = server.create_database("t1"); ...; server.stop(); server.cleanup()

initdb refuses to run as root (CI and the developers' machines are root), so the server's commands run as the
``postgres`` user (``runuser``) when we are root; the directory is made 0755 and given to that user so it can reach
it. Trust authentication on the socket only: nothing listens on the network (``listen_addresses=''``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

__all__ = ["PgServer", "MISSING_FIX"]

MISSING_FIX = "install it: apt-get install postgresql (scripts/install.sh --test does)"
_TIMEOUT = 120


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


class PgServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="passthru-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "log")
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.running = False
        self._n = 0

    @classmethod
    def find(cls) -> "PgServer | None":
        bindir = _bindir()
        if bindir is None:
            return None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return None
        return cls(bindir)

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as, os.path.join(self.bindir, tool), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
        if r.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(f"{tool} {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}\n{tail}")

    def start(self) -> None:
        if not os.path.exists(self.data):
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", self.data, "-o", f"-k {self.dir} -c listen_addresses='' -c fsync=off "
                  "-c max_connections=200", "-l", self.log, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again on the same data and socket."""
        self.stop("fast")
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self.dir}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        with psycopg.connect(host=self.dir, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
