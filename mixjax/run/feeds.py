"""Feeds: the batches of steps ``start, start + 1, ...`` handed to the step loop in order.

A feed knows how many batches it has drawn and the state of its data stream after
them (what a checkpoint saves), so a checkpoint at ``k`` completed steps holds the
stream after exactly ``k`` batches. :class:`PrefetchFeed` draws on a background
thread (:class:`mixjax.train.prefetch.BatchPrefetcher`: a bounded queue, holds
before checkpoint batches, a drain on stop); :class:`InlineFeed` draws on the loop's
thread, and :class:`SamplerFeed` draws from a weighted sampler on the loop's thread
(``data.prefetch=inline``). Both kinds give the same batches: the stream is a function
of the seed and the weight history, not of when a batch is drawn.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from mixjax.train.prefetch import BatchPrefetcher


def draws_inline(prefetch: str) -> bool:
    """Whether a job draws its batches on the loop's own thread (``data.prefetch``; "auto":
    on the CPU backend, where a second Python thread only adds hand-overs of the
    interpreter lock: docs/training.md, "Host cost per step")."""
    return prefetch == "inline" or (prefetch == "auto" and jax.default_backend() == "cpu")


class Feed:
    """The protocol, with the defaults of a feed that draws on demand."""

    def next(self) -> Any:
        raise NotImplementedError

    def drawn(self) -> int:
        """Index of the next batch the stream will draw."""
        raise NotImplementedError

    def state(self) -> Any:
        """The stream's state after :meth:`drawn` batches (JSON)."""
        raise NotImplementedError

    def stop_drawing(self) -> None:
        """No further draws (a stop): the loop trains on what :meth:`ready` still holds."""

    def ready(self) -> int:
        """Batches drawn and not yet taken."""
        return 0

    def release(self, done: int) -> None:
        """The checkpoint at ``done`` steps has read :meth:`state`."""

    def close(self) -> None:
        pass


class InlineFeed(Feed):
    """Draws batch ``t`` when the loop asks: ``make(next(stream), t)``.

    ``stream``: ``__next__`` and ``get_state()`` (the data stream's state).
    """

    def __init__(self, stream, make: Callable[[Any, int], Any] = lambda b, t: b, *,
                 start: int = 0):
        self._stream, self._make, self._next = stream, make, int(start)

    def next(self):
        t = self._next
        batch = self._make(next(self._stream), t)
        self._next = t + 1
        return batch

    def drawn(self) -> int:
        return self._next

    def state(self):
        return self._stream.get_state()


class SamplerFeed(Feed):
    """Draws batch ``t`` from a weighted sampler on the loop's thread (``data.prefetch=inline``).

    ``make(next(sampler), sampler.weights_for(t), t)``, as :class:`PrefetchFeed`'s thread
    does, when the loop asks for batch ``t``. With asynchronous dispatch the draw still
    overlaps the device's step ``t - 1``; what it saves is the second Python thread: the
    draw and the loop's dispatch share one interpreter lock, so on a host without spare
    cores the handovers between two threads cost more than the draw
    (``benchmarks/bench_host.py --prefetch both``). The loop's weight hand-overs reach the
    sampler before the draws that need them, as every step's hooks run before the next
    draw; the holds before checkpoint batches hold by construction.
    """

    def __init__(self, sampler, make: Callable[[Any, Any, int], Any], *, start: int):
        self._sampler, self._make, self._next = sampler, make, int(start)

    def next(self):
        t = self._next
        p = self._sampler.weights_for(t)
        batch = self._make(next(self._sampler), p, t)
        self._next = t + 1
        return batch

    def drawn(self) -> int:
        return self._next

    def state(self):
        return self._sampler.get_state()

    # the weights route of an online mixer (mixjax.train.loop)
    def set_weights(self, weights, step: int) -> None:
        self._sampler.set_weights(weights, step=step)

    def weights_through(self, step: int) -> None:
        pass   # the next draw comes after this call: nothing waits


class _Stream:
    """A weightless stream as the prefetcher's sampler (it asks for ``weights_for(t)``)."""

    def __init__(self, stream):
        self._stream = stream

    def weights_for(self, t):
        return None

    def __next__(self):
        return next(self._stream)

    def get_state(self):
        return self._stream.get_state()


class PrefetchFeed(Feed):
    """Batches drawn and placed on a background thread (``BatchPrefetcher``).

    ``sampler``: a :class:`mixjax.data.DomainSampler`-like object (``weights_for``,
    ``__next__``, ``get_state``, ``set_weights``), or any stream with ``__next__`` and
    ``get_state`` when ``weighted`` is False. ``make(host_batch, weights, t)`` runs on
    the thread. ``holds(t)``: batch ``t`` waits for :meth:`release` (checkpoints).
    """

    def __init__(self, sampler, make: Callable[[Any, Any, int], Any], *, start: int,
                 end: int, lag: int = 1, gated: bool = False, weighted: bool = True,
                 holds: Callable[[int], bool] = lambda t: False, depth: int = 2):
        self.prefetcher = BatchPrefetcher(sampler if weighted else _Stream(sampler), make,
                                          start=start, end=end, lag=lag, gated=gated,
                                          depth=depth, holds=holds)

    def next(self):
        return self.prefetcher.get()[1]

    def drawn(self) -> int:
        return self.prefetcher.drawn()

    def state(self):
        return self.prefetcher.sampler_state()

    def stop_drawing(self) -> None:
        self.prefetcher.stop_drawing()

    def ready(self) -> int:
        return self.prefetcher.ready()

    def release(self, done: int) -> None:
        self.prefetcher.release(done)

    def close(self) -> None:
        self.prefetcher.close()

    # the weights route of an online mixer (mixjax.train.loop)
    def set_weights(self, weights, step: int) -> None:
        self.prefetcher.set_weights(weights, step=step)

    def weights_through(self, step: int) -> None:
        self.prefetcher.weights_through(step)


def every(n: int | None) -> Callable[[int], bool]:
    """``done -> bool``: true every ``n`` completed steps (never when ``n`` is 0/None)."""
    return (lambda done: False) if not n else (lambda done: done % n == 0)
