"""Batches drawn, assembled and placed on the devices by a background thread.

The train loop (``mixjax.train.loop``) takes batch ``t`` from a bounded queue
while the step of batch ``t - 1`` runs; a thread draws batch ``t + 1`` from the
sampler, checks it and places it on the mesh meanwhile. Which batches may be
drawn early is decided by three rules, so the data stream stays a function of
``(seed, weight history)`` and a checkpoint holds the sampler state after
exactly its number of batches:

* **queue**: at most ``depth`` drawn batches wait to be taken;
* **weights** (``gated``, when the mixer's weights feed the sampler and can
  change): batch ``t`` is drawn only once the loop has handed over the weights
  of every step ``<= t - lag`` (:meth:`BatchPrefetcher.weights_through`); the
  sampler applies ``w_s`` from batch ``s + lag``, so a batch drawn earlier
  could miss them;
* **holds** (checkpoints): batch ``t`` with ``holds(t)`` (a checkpoint at ``t``
  completed steps is due) is drawn only after :meth:`release` ``(t)``: the
  checkpoint reads the sampler state after ``t`` batches first.

A stop (SIGTERM) calls :meth:`stop_drawing`; the loop trains on the batches
already drawn, then saves: the checkpoint's step and sampler state agree.

The sampler itself is not thread-safe; every call to it (the thread's draws,
the loop's ``set_weights`` and ``get_state``) goes through this object's lock.
An exception in the thread (bad data, a batch check) is raised again by
:meth:`get`, the call that would have returned that batch.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable


class BatchPrefetcher:
    """Draws batches ``start .. end - 1`` of ``sampler`` on a thread (see the module docstring).

    ``make_batch(host_batch, sampling_weights, t)`` turns the sampler's host batch
    into what the step takes (device arrays); it runs on the thread.
    """

    def __init__(self, sampler, make_batch: Callable[[dict, Any, int], Any], *, start: int,
                 end: int, lag: int, gated: bool, depth: int = 2,
                 holds: Callable[[int], bool] = lambda t: False):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._sampler, self._make_batch = sampler, make_batch
        self._end, self._lag, self._gated, self._depth = int(end), int(lag), bool(gated), depth
        self._holds = holds
        self._lock = threading.Lock()            # the sampler's: every call to it
        self._cond = threading.Condition()       # the fields below
        self._queue: collections.deque = collections.deque()
        self._next = int(start)                  # next batch the thread draws
        self._taken = int(start)                 # next batch get() returns
        self._through = int(start) - 1           # weights of steps <= this were handed over
        self._released = int(start)              # holds(t) at t <= this are lifted
        self._drawing = True
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mixjax-prefetch", daemon=True)
        self._thread.start()

    # -- the thread ----------------------------------------------------------------
    def _may_draw(self, t: int) -> bool:
        return (t < self._end and len(self._queue) < self._depth
                and (not self._gated or t - self._lag <= self._through)
                and (t <= self._released or not self._holds(t)))

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: not self._drawing or self._may_draw(self._next))
                    if not self._drawing:
                        return
                    t = self._next
                with self._lock:
                    p = self._sampler.weights_for(t)
                    host = next(self._sampler)
                batch = self._make_batch(host, p, t)
                with self._cond:
                    self._queue.append((t, batch))
                    self._next = t + 1
                    self._cond.notify_all()
        except BaseException as e:   # handed to the loop by get()
            with self._cond:
                self._error = e
                self._drawing = False
                self._cond.notify_all()

    # -- the loop's side -----------------------------------------------------------
    def get(self) -> tuple[int, Any]:
        """``(t, batch)`` of the next batch, waiting for the thread if needed."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._error is not None
                                or not self._thread.is_alive())
            if not self._queue:
                if self._error is not None:
                    raise self._error
                raise RuntimeError(f"prefetch: no batch {self._taken} (the thread stopped)")
            t, batch = self._queue.popleft()
            assert t == self._taken, (t, self._taken)
            self._taken = t + 1
            self._cond.notify_all()
            return t, batch

    def ready(self) -> int:
        """Batches drawn and not yet taken (after :meth:`stop_drawing`: all that remain)."""
        with self._cond:
            return len(self._queue)

    def weights_through(self, step: int) -> None:
        """The weights of every step ``<= step`` were handed to the sampler (``set_weights``)."""
        with self._cond:
            if step > self._through:
                self._through = step
                self._cond.notify_all()

    def release(self, t: int) -> None:
        """The checkpoint at ``t`` completed steps has read the sampler state: draw batch ``t``."""
        with self._cond:
            self._released = max(self._released, t)
            self._cond.notify_all()

    def set_weights(self, weights, step: int) -> None:
        with self._lock:
            self._sampler.set_weights(weights, step=step)

    def weights_for(self, t: int):
        with self._lock:
            return self._sampler.weights_for(t)

    def sampler_state(self) -> Any:
        """The sampler state after every batch drawn so far (see :meth:`drawn`)."""
        with self._lock:
            return self._sampler.get_state()

    def drawn(self) -> int:
        """Index of the next batch the sampler will draw."""
        with self._cond:
            return self._next

    def stop_drawing(self) -> None:
        """No further draws; returns once the thread has finished the batch it was drawing."""
        with self._cond:
            self._drawing = False
            self._cond.notify_all()
        self._thread.join()

    def close(self) -> None:
        """Stops the thread (the batches still queued are dropped)."""
        with self._cond:
            self._drawing = False
            self._cond.notify_all()
        self._thread.join()
