"""Finding the PostgreSQL programs (initdb, pg_ctl, psql, pg_basebackup) on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

from .errors import EmbeddedError

BINDIR_ENV = "PGDOG_PG_BINDIR"
# Debian/Ubuntu install each major version side by side here and put only wrappers on PATH
# (and initdb/pg_ctl not at all), so we look here ourselves.
DEBIAN_ROOT = "/usr/lib/postgresql"
# Where a PostgreSQL built from source installs by default.
SOURCE_BINDIR = "/usr/local/pgsql/bin"


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def _debian_bindirs() -> list[str]:
    # Highest version first: numeric order, so that "15" beats "9.6".
    try:
        versions = [v for v in os.listdir(DEBIAN_ROOT) if _version_key(v)]
    except OSError:
        return []
    versions.sort(key=_version_key, reverse=True)
    return [os.path.join(DEBIAN_ROOT, v, "bin") for v in versions]


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    bindir = done.stdout.strip()
    return bindir if done.returncode == 0 and bindir else None


def _candidates(name: str) -> Iterator[str]:
    env_dir = os.environ.get(BINDIR_ENV)
    if env_dir:
        yield os.path.join(env_dir, name)
    on_path = shutil.which(name)
    if on_path:
        yield on_path
    # pg_config is only asked (and only costs a subprocess) when the cheaper places failed.
    bindir = _pg_config_bindir()
    if bindir:
        yield os.path.join(bindir, name)
    for bindir in _debian_bindirs():
        yield os.path.join(bindir, name)
    yield os.path.join(SOURCE_BINDIR, name)


def find_pg_binary(name: str) -> str:
    """Return the path of the PostgreSQL program ``name``.

    Looks in $PGDOG_PG_BINDIR, then PATH, then ``pg_config --bindir``, then
    /usr/lib/postgresql/<highest version>/bin, then /usr/local/pgsql/bin.
    """
    for path in _candidates(name):
        if _is_executable(path):
            return path
    raise EmbeddedError(
        f"{name} not found: install postgresql (apt-get install postgresql) "
        f"or set {BINDIR_ENV} to the directory that holds it"
    )
