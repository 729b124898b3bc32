"""Run a callback-driven solver one objective evaluation at a time, in a greenlet.

The solver (``nlopt.opt.optimize``, ``scipy.optimize.minimize``...) runs inside a greenlet
(https://greenlet.readthedocs.io): a coroutine with its own C stack, switched by copying stack
slices, so it can be suspended in the middle of C code such as NLopt's callback. The solver's
objective calls :meth:`SolverWorker.request` with the point; that switches back to the caller
of :meth:`SolverWorker.next`, which gets ``(POINT, payload)``, evaluates, sends the value with
:meth:`SolverWorker.reply`, and the next ``next()`` switches into the solver again, where
``request`` returns the value. Everything runs in one thread, one side at a time: no lock, no
wake-up, no scheduler in the loop (a switch costs about a microsecond), and the solve is as
deterministic as a direct call. Thread-local state (NLopt's random generator seeded by
``nlopt.srand``, torch's grad mode) is the calling thread's, as in a direct call; two
stepwise solvers advanced alternately in one thread therefore share NLopt's random stream.
A greenlet would start in an empty ``contextvars`` context: each switch into the solver hands
it the caller's current context instead, so the solver's callbacks (constraint functions)
see and set the caller's context variables, as in a direct call.

A greenlet belongs to the thread that created it: :meth:`SolverWorker.next` called from
another thread raises ``RuntimeError`` (nothing is changed; resume from the first thread, or
restart the solver with ``close()``).

:meth:`SolverWorker.close` stops the solver: ``stop_exc`` is thrown into the suspended
greenlet, so the pending ``request`` raises it inside the callback (``nlopt.ForcedStop``, or
a private exception for SciPy), the solver unwinds its C and Python frames and the greenlet
ends. Owners register ``close`` with ``weakref.finalize`` so a discarded optimizer never leaves
a suspended greenlet behind. The solve must hold no reference to the owner (only to the worker
and the solver), or the owner would never be collected. ``close`` from another thread (a
finalizer run by a garbage collection there) cannot switch into the greenlet: greenlet then
unwinds it (raising ``GreenletExit`` in the callback) at its thread's next greenlet call, e.g.
the next step of any solver module there.
"""

from __future__ import annotations

import threading

POINT, DONE = "point", "done"


def _greenlet_module():
    try:
        import greenlet
    except ImportError:  # pragma: no cover - greenlet is a dependency of the solver extras
        raise ImportError("optbridge solver adapters need the greenlet package; "
                          "pip install optbridge[scipy] (or [nlopt])") from None
    return greenlet


class SolverWorker:
    """``solve(request)`` runs in a greenlet; ``request(payload) -> reply`` is its objective."""

    __slots__ = ("_glet", "_getcurrent", "_in", "_stop_exc", "thread", "_name", "closed",
                 "finished")

    def __init__(self, solve, stop_exc: type[BaseException], name: str = "optbridge-solver"):
        greenlet = _greenlet_module()
        self._stop_exc = stop_exc
        self._name = name
        self._in = None  # reply for the solver, sent by the next switch
        self._getcurrent = greenlet.getcurrent
        self.thread = threading.get_ident()  # the thread it belongs to
        self.closed = False
        self.finished = False
        self._glet = greenlet.greenlet(self._runner(solve))

    def _runner(self, solve):
        """The greenlet's body: the solve, its outcome returned to the parent as ``DONE``."""
        request = self.request

        def run(_first_reply):
            try:
                result = solve(request)
            except BaseException as e:  # handed to the caller of next()/close()
                return DONE, (None, e)
            return DONE, (result, None)
        return run

    # -------------------------------------------------------------------------- solver side
    def request(self, payload):
        if self.closed:
            raise self._stop_exc("solver stopped")
        return self._glet.parent.switch((POINT, payload))

    # -------------------------------------------------------------------------- caller side
    def check_thread(self) -> None:
        """``RuntimeError`` unless called from the thread that created the worker."""
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                f"{self._name}: the solver was started in another thread and cannot be resumed "
                f"here (a greenlet belongs to its thread); step it from the thread that started "
                f"it, or close() the optimizer to restart the solver from the best point"
            )

    def _adopt(self) -> None:
        """Make the calling greenlet the solver's parent (where ``request`` and the end of the
        solve switch to)."""
        self.check_thread()
        current = self._getcurrent()
        if self._glet.parent is not current:
            self._glet.parent = current

    def next(self):
        """Run the solver until it asks for a point, ``(POINT, payload)``, or finishes,
        ``(DONE, (result, exception))``; the solver's pending request gets the last
        :meth:`reply`."""
        return self.send(self._in)

    def send(self, reply):
        """:meth:`reply` then :meth:`next`, in one call: the solver's pending request returns
        ``reply`` and the solver runs to its next request or its end."""
        glet = self._glet
        current = self._getcurrent()
        if glet.parent is not current:
            self._adopt()  # another greenlet of this thread (or another thread: RuntimeError)
        context = current.gr_context
        if glet.gr_context is not context:
            glet.gr_context = context  # the solver's callbacks see the caller's context
        self._in = None
        out = glet.switch(reply)
        if out[0] == DONE:
            self.finished = True
        return out

    def reply(self, value) -> None:
        self._in = value

    def close(self) -> None:
        """Stop the solver and let it unwind (idempotent, safe from a finalizer)."""
        if self.closed:
            return
        self.closed = True
        glet = self._glet
        if self.finished or not glet or glet is self._getcurrent():
            return  # never started, already ended, or closing from inside the solve
        try:
            self._adopt()
        except RuntimeError:
            # another thread: drop the reference the solver's frames reach it through (a cycle
            # garbage collection cannot break), so greenlet queues it for its own thread
            self._glet = None
            return
        try:
            glet.throw(self._stop_exc("solver stopped"))
        finally:
            self.finished = True
