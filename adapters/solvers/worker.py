"""Run a callback-driven solver in a worker thread, one objective evaluation at a time.

The solver (``nlopt.opt.optimize``, ``scipy.optimize.minimize``) calls its objective from the
worker thread; the objective calls :meth:`SolverWorker.request` with the point, which puts it
on a queue for the main thread and blocks until :meth:`SolverWorker.reply` sends the value
back. The main thread takes points with :meth:`SolverWorker.next`.

:meth:`SolverWorker.close` stops the solver: the blocked (or next) ``request`` raises
``stop_exc`` inside the callback (``nlopt.ForcedStop``, or a private exception for SciPy), the
solver unwinds and the thread ends. Owners register ``close`` with ``weakref.finalize`` so a
discarded optimizer never leaves a thread behind. The thread must hold no reference to the
owner (only to the worker and the solver), or the owner would never be collected.
"""

from __future__ import annotations

import queue
import threading

POINT, DONE = "point", "done"
_STOP = object()


class SolverWorker:
    """``solve(request)`` runs in a thread; ``request(payload) -> reply`` is its objective."""

    def __init__(self, solve, stop_exc: type[BaseException], name: str = "optbridge-solver"):
        self._to_main: queue.SimpleQueue = queue.SimpleQueue()
        self._to_worker: queue.SimpleQueue = queue.SimpleQueue()
        self._stop_exc = stop_exc
        self.closed = False
        self.finished = False
        self.thread = threading.Thread(
            target=_run, args=(solve, self.request, self._to_main), name=name, daemon=True
        )
        self.thread.start()

    # -------------------------------------------------------------------- worker thread side
    def request(self, payload):
        if self.closed:
            raise self._stop_exc("solver stopped")
        self._to_main.put((POINT, payload))
        reply = self._to_worker.get()
        if reply is _STOP:
            raise self._stop_exc("solver stopped")
        return reply

    # ---------------------------------------------------------------------- main thread side
    def next(self):
        """Block until the solver asks for a point, ``(POINT, payload)``, or finishes,
        ``(DONE, (result, exception))``."""
        kind, value = self._to_main.get()
        if kind == DONE:
            self.finished = True
        return kind, value

    def reply(self, value) -> None:
        self._to_worker.put(value)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the solver and join the thread (idempotent, safe from a finalizer)."""
        if self.closed:
            return
        self.closed = True
        self._to_worker.put(_STOP)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)


def _run(solve, request, to_main) -> None:
    try:
        result = solve(request)
    except BaseException as e:  # handed to the main thread
        to_main.put((DONE, (None, e)))
    else:
        to_main.put((DONE, (result, None)))
