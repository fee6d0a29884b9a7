"""`workers = N`: N processes serving the same port, each with its own `trio.run`.

One Python process uses one core. With `workers = N` the process started by the operator
becomes a small supervisor: it forks N workers, each binding the port with SO_REUSEPORT (the
kernel spreads new connections over them), and it does nothing else but

- restart a worker that dies (a crash costs that worker's clients, not the others');
- forward SIGHUP (each worker reloads, and the supervisor re-reads the files too, so a
  worker it restarts later starts from the current configuration) and SIGINT/SIGTERM (each
  worker shuts down gracefully; the supervisor exits once they all have);
- stop everything when a worker cannot start (the port is taken, a hook cannot load): a
  restart would fail the same way.

Pools are split: each worker gets its share of every pool size (`share`), so PostgreSQL sees
at most the configured number of connections per pool in total.

A CancelRequest arrives on a new connection, which the kernel may hand to any worker, while
the client it cancels lives in one. The pid of each client's BackendKeyData says which worker
(pid % N); a worker that gets another's cancel passes the 16 bytes on through that worker's
Unix socket in a private directory the supervisor made (`peer_path`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

import attrs
import trio

from . import listener, logs
from .config import Config, ConfigError, load_config
from .protocol import messages as m

log = logging.getLogger("trio_pgdog")

# A worker that exits with a start-up failure within this many seconds of starting is not
# restarted: everything stops with its exit status.
STARTUP_GRACE = 10.0
RESTART_DELAY = 1.0  # seconds between restarts of a worker that keeps dying
_PR_SET_PDEATHSIG = 1


@attrs.frozen
class WorkerSlot:
    """Which of `count` workers this process is, and where the workers' peer sockets are."""

    index: int
    count: int
    peers_dir: str

    @property
    def name(self) -> str:
        return f"worker {self.index}"

    def owns(self, pid: int) -> bool:
        """Is the client with this BackendKeyData pid one of this worker's?"""
        return pid % self.count == self.index

    def pid_for(self, n: int) -> int:
        """The n-th pid value this worker may hand out (n >= 0; the result stays in 31 bits
        for n < 2**31 // count)."""
        return n * self.count + self.index

    def share(self, total: int) -> int:
        """This worker's part of `total` connections: the parts add up to `total`, and none is
        0 when the total is not (a worker without a connection could serve nobody)."""
        part = total // self.count + (1 if self.index < total % self.count else 0)
        return max(part, 1) if total else 0

    def peer_path(self, index: int) -> str:
        return os.path.join(self.peers_dir, f"worker-{index}.sock")


# --- in a worker ---------------------------------------------------------------------------


async def serve_peer_cancels(slot: WorkerSlot, cancel: Callable[[int, int], object],
                             *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Take the CancelRequests other workers pass on (see the module's docstring)."""
    path = slot.peer_path(slot.index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by this worker's previous life
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.bind(path)
        sock.listen(64)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                peer, _ = await sock.accept()
                nursery.start_soon(_one_peer_cancel, peer, cancel)


async def _one_peer_cancel(peer: trio.socket.SocketType,
                           cancel: Callable[[int, int], object]) -> None:
    with peer, trio.move_on_after(5):
        data = b""
        while len(data) < 16:
            chunk = await peer.recv(16 - len(data))
            if not chunk:
                return
            data += chunk
        if m.unpack_i32(data) == 16 and m.unpack_i32(data, 4) == m.CANCEL_REQUEST:
            await cancel(m.unpack_i32(data, 8), m.unpack_i32(data, 12))


async def pass_cancel(slot: WorkerSlot, pid: int, secret: int) -> None:
    """Hand a CancelRequest to the worker whose client it names."""
    owner = pid % slot.count
    with trio.move_on_after(5):
        try:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                await sock.connect(slot.peer_path(owner))
                await sock.send(m.cancel_request(pid, secret))
            log.info("cancel request for a client of worker %d passed on to worker %d",
                     owner, owner)
        except OSError as exc:
            log.info("cancel request for a client of worker %d not passed on: %s", owner, exc)


# --- the supervisor --------------------------------------------------------------------------


@attrs.define
class _Worker:
    slot: WorkerSlot
    pid: int
    started: float


class Supervisor:
    """Forks and watches the workers; see the module's docstring."""

    def __init__(self, config: Config, serve_worker: Callable[[Config, WorkerSlot], int]):
        self.config = config
        self.serve_worker = serve_worker
        self.count = config.general.workers
        self.peers_dir = tempfile.mkdtemp(prefix="trio_pgdog-workers-")
        self.workers: dict[int, _Worker] = {}   # by OS pid
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.count):
                self._start(WorkerSlot(index, self.count, self.peers_dir))
            log.info("supervising %d workers (pids %s)", self.count,
                     ", ".join(str(pid) for pid in self.workers))
            while self.workers:
                self._reap(*os.waitpid(-1, 0))
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            shutil.rmtree(self.peers_dir, ignore_errors=True)
        log.info("all workers stopped")
        return self.status

    def _start(self, slot: WorkerSlot) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            status = 1
            try:
                _detach()
                for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                logs.set_worker(slot.name)
                log.info("%s started (pid %d)", slot.name, os.getpid())
                status = self.serve_worker(self.config, slot)
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers[pid] = _Worker(slot, pid, time.monotonic())

    def _reap(self, pid: int, wait_status: int) -> None:
        worker = self.workers.pop(pid, None)
        if worker is None:
            return
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if self.stopping:
            log.info("%s (pid %d) stopped (%s)", worker.slot.name, pid, how)
            self.status = max(self.status, code)
            return
        young = time.monotonic() - worker.started < STARTUP_GRACE
        if code > 0 and young:
            log.error("%s (pid %d) could not start (%s): stopping the other workers",
                      worker.slot.name, pid, how)
            self.status = code
            self._stop(signal.SIGTERM)
            return
        log.warning("%s (pid %d) died (%s): restarting it", worker.slot.name, pid, how)
        if young:
            time.sleep(RESTART_DELAY)  # a worker that dies at once must not spin the CPU
        self._start(worker.slot)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Workers hear signals from the supervisor only (_detach): Ctrl-C once is one
        # graceful shutdown, a second one stops them at once, as for a single process.
        if signum == signal.SIGHUP:
            self._reload()
            for pid in self.workers:
                os.kill(pid, signal.SIGHUP)
            return
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self._stop(signal.SIGTERM if not self.stopping else signal.SIGINT)

    def _stop(self, signum: int) -> None:
        self.stopping = True
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reload(self) -> None:
        """The files as they are now, for the workers started from here on."""
        old = self.config
        try:
            new = load_config(old.pgdog_path, old.users_path)
        except ConfigError as exc:
            log.error("reload (supervisor): keeping the running configuration: %s", exc)
            return
        if new.general.workers != self.count:
            log.warning("reload: workers = %d needs a restart; still running %d",
                        new.general.workers, self.count)
        self.config = attrs.evolve(new, general=attrs.evolve(new.general, workers=self.count))


def _detach() -> None:
    """In a new worker: out of the terminal's process group (a Ctrl-C reaches the supervisor,
    which passes it on), and stopped if the supervisor dies (Linux: PR_SET_PDEATHSIG)."""
    os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


def check_port(host: str, port: int) -> None:
    """ListenError now if the workers could not bind host:port (before any is forked)."""
    listener.bind(host, port, reuse_port=True).close()
