"""Builds the C extensions, trio_pgdog._speedups and trio_pgdog._reactor (see their sources).

Optional: without a C compiler or Python headers the install still succeeds, and the hook
path runs the pure-Python twins of its functions (slower per statement; the startup log
says so).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trio_pgdog._speedups",
            sources=["trio_pgdog/_speedups.c", "trio_pgdog/_hashing.c",
                     "trio_pgdog/_template.c"],
            include_dirs=["hooks/include"],
            optional=True,
        ),
        # The plain-transaction reactor (session/parking.py); Linux only (epoll).
        Extension("trio_pgdog._reactor", sources=["trio_pgdog/_reactor.c"], optional=True),
    ]
)
