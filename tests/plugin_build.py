"""Building native plugins for the tests (tests/test_native.py, tests/test_native_proxy.py).

The test plugins (tests/plugins/*.c) are compiled directly with gcc (warnings are errors);
the C example and the first-party plugins through their Makefiles, the Rust example with
`cargo build --offline`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "hooks" / "include"
HEADER = INCLUDE / "pgdog_plugin.h"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"

CC = shutil.which("gcc") or shutil.which("cc")
CARGO = shutil.which("cargo")


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


def compile_plugin(source: Path, out: Path, *extra: str) -> Path:
    assert CC is not None, "no C compiler"
    run(CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-shared", f"-I{INCLUDE}",
        *extra, "-o", out, source)
    return out


def build_c_plugins(out: Path) -> Path:
    """Every C plugin into `out`: lib<name>.so for tests/plugins/<name>.c,
    libshard_comment.so (examples/plugins/c) and libprimary_only_tables.so (make -C plugins)."""
    for source in sorted(TEST_PLUGINS.glob("*.c")):
        compile_plugin(source, out / f"lib{source.stem}.so")
    run("make", "-s", "-C", ROOT / "examples" / "plugins" / "c", f"OUT={out}")
    run("make", "-s", "-C", ROOT / "plugins", f"OUT={out}")
    return out


def build_rust_example(target: Path) -> Path:
    """examples/plugins/rust built into the cargo target directory `target`: the library's path."""
    assert CARGO is not None, "no cargo"
    run(CARGO, "build", "--offline", "--release", "--quiet", "--target-dir", target,
        cwd=ROOT / "examples" / "plugins" / "rust")
    return target / "release" / "libshard_comment.so"
