"""A throw-away PostgreSQL server on loopback, for the distributed-store tests (and for trying them by hand).

Standard library only, so that `.ci/run` can call it before `.venv` exists:

    python3 tests/helpers/postgres.py install     # apt-get install postgresql, unless initdb/pg_ctl are already there
    python3 tests/helpers/postgres.py serve       # a server in a temporary directory until Ctrl-C; prints its URLs

The server lives in a fresh temporary directory (data, socket and log), listens on 127.0.0.1 only, on a free
port, with `fsync=off` (a test database: speed over durability). Local socket connections are trusted; TCP
connections need the password of the role `ttm`, as on a real server. When run as root (CI, containers),
initdb and the server run as the `postgres` user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTALL_HINT = (
    "install the PostgreSQL server binaries (initdb, pg_ctl): `apt-get install postgresql` on "
    "Debian/Ubuntu (or `python3 tests/helpers/postgres.py install`, which .ci/run does), "
    "or put a directory holding them on PATH"
)
ROLE, PASSWORD = "ttm", "ttm-secret"


class PostgresNotFound(RuntimeError):
    pass


def bin_dir() -> Path:
    """The directory of `initdb` and `pg_ctl`: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    raise PostgresNotFound(
        f"PostgreSQL not found (no pg_ctl on PATH or under /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
    )


def install() -> Path:
    """apt-get install postgresql when its binaries are missing (needs root and a Debian/Ubuntu system)."""
    try:
        return bin_dir()
    except PostgresNotFound:
        pass
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresNotFound(f"PostgreSQL is missing and this is not root on a Debian/Ubuntu system: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True, env=env)
    return bin_dir()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`with PostgresServer() as pg: pg.create_database("optuna")` -> a URL; stopped and deleted on exit."""

    def __init__(self, port: int | None = None):
        self.bin = bin_dir()
        self.port = port or free_port()
        # /tmp itself (not pytest's tmp_path): as root the server runs as `postgres`, which must reach the dir
        self.root = Path(tempfile.mkdtemp(prefix="ttm-pg-"))
        self.data, self.socket_dir, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None

    # -- commands as the server's user ----------------------------------------------------------------------
    def _run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args),
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")
        return proc

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            str(self.bin / "psql"),
            "-X",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ).stdout.strip()

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> "PostgresServer":
        self.socket_dir.mkdir()
        if self.user:
            pw = pwd.getpwnam(self.user)
            for path in (self.root, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-k {self.socket_dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def create_database(self, name: str) -> str:
        """A database owned by the role `ttm`; its SQLAlchemy URL (with the password)."""
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def url(self, database: str, password: bool = True) -> str:
        """With password=False the URL leaves it to libpq's PGPASSWORD or ~/.pgpass, out of logs and configs."""
        return f"postgresql://{ROLE}{':' + PASSWORD if password else ''}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command == "install":
            print(f"PostgreSQL binaries: {install()}")
            return 0
        if command == "serve":
            with PostgresServer() as pg:
                urls = {name: pg.create_database(name) for name in ("optuna", "mlflow")}
                print("\n".join(f"{name}: {url}" for name, url in urls.items()), flush=True)
                print(f"data and log in {pg.root}; Ctrl-C stops the server and deletes them", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0
    except PostgresNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
