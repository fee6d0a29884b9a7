"""Running PostgreSQL programs from one installation, as the right OS user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import attrs

from .binaries import find_pg_binary
from .errors import EmbeddedError

SERVER_USER = "postgres"


def _clean_env() -> dict[str, str]:
    # The caller's PGHOST/PGPORT/PGDATA/PGPASSWORD... would silently redirect pg_ctl and psql
    # to another server; C messages keep errors readable whatever the caller's locale.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_MESSAGES"] = "C"
    return env


def _runuser() -> str:
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise EmbeddedError("running as root needs runuser (util-linux) to start PostgreSQL")
    return found


@attrs.frozen
class Runner:
    """Runs initdb, pg_ctl, psql and pg_basebackup from one bindir.

    One bindir for all of them because pg_basebackup and the server must share a major
    version, and Debian's PATH wrappers may pick a different one per program.
    ``as_user`` is set when we are root: initdb and postgres refuse to run as root.
    """

    bindir: str
    as_user: pwd.struct_passwd | None

    @classmethod
    def detect(cls) -> Runner:
        bindir = os.path.dirname(find_pg_binary("initdb"))
        as_user = None
        if os.geteuid() == 0:
            try:
                as_user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise EmbeddedError(
                    f"running as root but there is no {SERVER_USER!r} OS user to run PostgreSQL as"
                    " (apt-get install postgresql creates it)"
                ) from None
        return cls(bindir, as_user)

    def program(self, name: str) -> str:
        path = os.path.join(self.bindir, name)
        return path if os.access(path, os.X_OK) else find_pg_binary(name)

    def chown(self, path: str) -> None:
        """Give ``path`` to the server's OS user (no-op unless we are root)."""
        if self.as_user is not None:
            os.chown(path, self.as_user.pw_uid, self.as_user.pw_gid)

    def run(
        self,
        name: str,
        *args: str,
        cwd: str,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run program ``name`` and return the finished process; never raises on exit status."""
        argv = [self.program(name), *args]
        if self.as_user is not None:
            argv = [_runuser(), "-u", self.as_user.pw_name, "--", *argv]
        try:
            # cwd: a root caller's cwd (often /root) is not readable by postgres; initdb and
            # pg_ctl complain about that, so run from a directory the server owns.
            return subprocess.run(
                argv,
                cwd=cwd,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_clean_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(f"{name} did not finish within {timeout:g}s") from exc
        except OSError as exc:
            raise EmbeddedError(f"could not run {argv[0]}: {exc}") from exc
