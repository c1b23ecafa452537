"""Process isolation: sweep points run in a worker process that the runner replaces when a point kills it.

One illegal memory access leaves a sticky CUDA error that poisons every later call in the process; a
segfault or ``abort()`` ends it; a hung kernel never returns. A ``Worker`` runs points one at a time in a
child process (``multiprocessing`` spawn context: a fresh CUDA context, never a forked one) that stays up
across points, so imports, CUDA initialisation and Triton's in-memory caches are paid once. After a point:

- the child died (a crash, ``abort()``, a signal): the point is recorded ``error`` with how it died;
- the child answered but its CUDA context is broken (a sticky error): the point keeps its row, marked
  ``error`` with the CUDA message, and the child exits;
- no answer within the point's timeout: the child is killed and the point recorded ``timeout``.

In each case the next point gets a fresh child; finished rows are already on disk (the runner appends each
row as it arrives), so nothing is lost.
"""
from __future__ import annotations

import atexit
import importlib
import multiprocessing
import signal
import time

START_TIMEOUT_S = 300.0  # importing torch and initialising CUDA on a busy machine


class WorkerError(Exception):
    """The worker process cannot be started at all (a whole-run problem, not a point's)."""


class Worker:
    """A reusable child process that runs ``point.run_point``; see the module docstring."""

    def __init__(self, plugins: tuple[str, ...] = (), start_timeout_s: float = START_TIMEOUT_S,
                 cuda_device: int | None = None):
        self.plugins = tuple(plugins)
        self.cuda_device = cuda_device  # the child's current CUDA device (a torchrun rank's GPU); None: default
        self.start_timeout_s = start_timeout_s
        self.starts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        atexit.register(self.close)  # runs before multiprocessing joins its non-daemon children at exit

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, point, opts, device_peaks: dict, timeout_s: float) -> dict:
        """The results row of ``point``, whatever happens to the child running it."""
        from fa2bench.run.point import base_row

        if not self.alive:
            self._start()
        try:
            self._conn.send((point, opts, device_peaks))
        except (BrokenPipeError, EOFError, OSError):  # it died between points
            self._start()
            self._conn.send((point, opts, device_peaks))
        if not self._conn.poll(timeout_s):
            self._kill()
            return {**base_row(point), "status": "timeout",
                    "error": f"no result within --point-timeout {timeout_s:g} s; the worker was killed and "
                             "restarted"}
        try:
            row, fatal = self._conn.recv()
        except (EOFError, OSError):
            how = self._reap()
            return {**base_row(point), "status": "error",
                    "error": f"the worker process died ({how}) running this point; it was restarted"}
        if fatal:
            self._reap(wait_s=30)
        return row

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self) -> None:
        self._kill()
        parent, child = self._ctx.Pipe()
        # not a daemon: providers may start processes of their own (torch.compile's compile workers); the
        # runner closes the worker when the sweep ends, and the child exits when the parent's pipe closes
        self._proc = self._ctx.Process(target=_serve, args=(child, self.plugins, self.cuda_device),
                                       name="fa2bench-worker")
        self._proc.start()
        child.close()
        self._conn = parent
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout_s
        while not parent.poll(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                how = self._reap() if not self._proc.is_alive() else "no answer"
                self._kill()
                raise WorkerError(f"the worker process did not start ({how})")
        message = parent.recv()
        if message != "ready":
            self._kill()
            raise WorkerError(f"the worker process did not start: {message}")

    def _reap(self, wait_s: float = 10.0) -> str:
        """Wait for a dying child and say how it ended."""
        self._proc.join(wait_s)
        if self._proc.is_alive():
            self._kill()
            return "it hung while exiting"
        code = self._proc.exitcode
        self._conn.close()
        self._proc = self._conn = None
        if code is not None and code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not. Safe to call more than once."""
        if self.alive:
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (BrokenPipeError, OSError):
                pass
        self._kill()


def _serve(conn, plugins: tuple[str, ...], cuda_device: int | None = None) -> None:
    """The child: run points until told to stop (None) or until its CUDA context is broken."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    try:
        if cuda_device is not None:  # before anything touches CUDA
            import torch

            torch.cuda.set_device(cuda_device)
        for module in plugins:
            importlib.import_module(module)
        from fa2bench.run.point import cuda_context_error, run_point
    except Exception as exc:  # reported to the parent as a start-up failure
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        point, opts, device_peaks = message
        row = run_point(point, opts, device_peaks)
        broken = cuda_context_error()
        if broken:
            row = {**row, "status": "error", "error": row.get("error") or f"CUDA context lost: {broken}"}
        conn.send((row, bool(broken)))
        if broken:
            return
