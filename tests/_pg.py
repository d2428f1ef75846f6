"""A throwaway PostgreSQL server on 127.0.0.1, for the fleet tests and for `.ci/run`.

One home for "how do we get a real PostgreSQL here": `.ci/run` calls this file as a
script (`python tests/_pg.py start DIR` prints a DSN, `stop DIR` stops it, `find -`
says whether the server binaries are here), and the
`pg_server` fixture imports it when no server was given through MIRAKL_CANCEL_TEST_PG.

The server refuses to run as root, so when we are root it runs as an unprivileged user
(`postgres` where the distribution made one, else `mcpg`, created here). It lives in a
temporary directory, listens on 127.0.0.1 only, on a free port, with a random password
(scram-sha-256), and trades durability for speed (fsync off): it is thrown away.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ENV", "PgUnavailable", "find_bindir", "start", "stop"]

#: The environment variable that hands a running server's DSN to the tests.
ENV = "MIRAKL_CANCEL_TEST_PG"
_USERS = ("postgres", "mcpg")
_START_TIMEOUT = 60


class PgUnavailable(Exception):
    """No PostgreSQL server can be started on this machine (the reason says why)."""


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, or where Debian puts them."""
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found is None:
            break
        here = Path(os.path.realpath(found)).parent
        if (here / "initdb").exists() and (here / "pg_ctl").exists():
            return here
    # Debian/Ubuntu keep the server binaries off PATH, one directory per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    for pg_ctl in reversed(candidates):
        here = Path(pg_ctl).parent
        if (here / "initdb").exists():
            return here
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as (None: we are not root, run as us)."""
    if os.geteuid() != 0:
        return None
    for name in _USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", _USERS[-1]], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PgUnavailable(f"running as root and cannot create a user for PostgreSQL: {exc}"
                            ) from None
    return pwd.getpwnam(_USERS[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(args: list[str], user: pwd.struct_passwd | None, **kwargs: object
         ) -> subprocess.CompletedProcess[str]:
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def start(directory: str | os.PathLike[str]) -> str:
    """Create and start a server under `directory`; return its DSN (password included)."""
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) on this machine; "
                            "install them, e.g. `apt-get install postgresql`")
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    user = _server_user()
    data, password_file = base / "data", base / "pwfile"
    password = secrets.token_hex(16)
    password_file.write_text(password + "\n")
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(password_file, user.pw_uid, user.pw_gid)
    os.chmod(password_file, 0o600)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "mirakl", "--auth=scram-sha-256",
              f"--pwfile={password_file}", "-E", "UTF8", "--no-sync"], user, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise PgUnavailable(f"initdb failed: {detail}") from None
    finally:
        password_file.unlink(missing_ok=True)
    last_error = ""
    for _ in range(3):  # a free port can be taken between our probe and the server's bind
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                   " -c max_connections=200")
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                  "-t", str(_START_TIMEOUT), "-o", options, "start"], user, env=env)
        except (OSError, subprocess.CalledProcessError) as exc:
            log = base / "log"
            last_error = log.read_text(errors="replace")[-2000:] if log.exists() else str(exc)
            continue
        (base / "bindir").write_text(str(bindir))
        return f"postgresql://mirakl:{password}@127.0.0.1:{port}/postgres"
    raise PgUnavailable(f"the PostgreSQL server did not start: {last_error}")


def stop(directory: str | os.PathLike[str]) -> None:
    """Stop the server started under `directory` (quietly: nothing there, nothing to do)."""
    base = Path(directory)
    data = base / "data"
    if not (data / "postmaster.pid").exists():
        return
    bindir_file = base / "bindir"
    bindir = Path(bindir_file.read_text()) if bindir_file.exists() else find_bindir()
    if bindir is None:
        return
    user = _server_user()
    try:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user)
    except (OSError, subprocess.CalledProcessError):
        # A fast stop that failed: end the postmaster by its pid, which we started.
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
            time.sleep(0.5)
        except (OSError, ValueError, IndexError):
            pass


if __name__ == "__main__":
    command, where = sys.argv[1], sys.argv[2]
    if command == "start":
        try:
            print(start(where))
        except PgUnavailable as exc:
            print(f"PostgreSQL: {exc}", file=sys.stderr)
            sys.exit(1)
    elif command == "stop":
        stop(where)
    elif command == "find":  # `find -`: exit 1 when the server binaries are missing
        bindir = find_bindir()
        print(bindir or "", end="\n" if bindir else "")
        sys.exit(0 if bindir else 1)
    else:
        sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
