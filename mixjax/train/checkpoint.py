"""Checkpoints of a run: orbax ``CheckpointManager`` under ``RUN_DIR/checkpoints``.

Each checkpoint ``checkpoints/<step>/`` holds two items:

* ``state``: the whole train state (params, optimiser state, mixer state,
  step, RNG, latest eval loss, a method's ``extra``) as the flat dict of
  ``TrainState.to_tree``; frozen inputs (a reference model) are not state and
  are not saved: they are reloaded from the reference run,
* ``host``: JSON with the sampler state (``sampler.get_state()``), the last
  weights sent to the sampler and the step; everything the host loop needs to
  continue the same data stream.

* ``process`` (when given): one JSON file per process
  (``process/process_<i>-of-<n>.json``, :mod:`mixjax.train.process_json`),
  for per-process values such as each host's sampler state on a multi-host run.

With ``async_save=True`` a save returns once the arrays are copied off the
devices and the files are written in the background, by every process for its
own shards; ``wait()`` (also done by ``restore`` and ``close``) blocks until
the last save is complete.

With ``defer=True`` as well (on a single-process run) a save with ``wait=False``
returns even sooner: it copies the state on the devices (one jitted program, so a
step that donates its state cannot delete what is being saved) and hands orbax's
whole save call, including the device->host copy, to one background thread.
orbax's save call starts ~10 threads and waits on each (~25-40 ms of wall per
checkpoint on a loaded 2-core host, of which ~8 ms CPU); that wait leaves the
training loop. The cost: the devices hold a second copy of the state until the
background save has copied it off them. Every other method first waits for a
deferred save call to return, so orbax's manager is only ever used by one thread
at a time; an error in the background save is raised by the next call.

``<step>`` is the number of completed train steps. Restoring needs an abstract
target (``jax.ShapeDtypeStruct``s) so optimiser namedtuples come back intact.

``restore_verified`` checks what it restores: every item readable (a truncated
or missing data file, a deleted ``_METADATA``, ``host/`` or ``state/`` or OCDBT
manifest fails the read), the state's tree structure, shapes and dtypes equal to
the target's, and the host JSON's SHA-256 (saved in it as ``checksum``) and step.
A damaged checkpoint is moved aside to ``checkpoints_damaged/`` (``move_aside``),
never deleted.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import pathlib
import re
import sys
import tempfile
import threading
from concurrent import futures
from typing import Any

import jax
import orbax.checkpoint as ocp

from mixjax.train import process_json


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or does not fit the run."""


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = False,
                 defer: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self._options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            # sync (default): a save is complete when save() returns
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        # orbax's save synchronises all processes: deferred only on a single-process run
        self._defer = bool(defer and async_save and jax.process_count() == 1)
        self._worker: futures.ThreadPoolExecutor | None = None
        self._pending: futures.Future | None = None

    def _join(self) -> None:
        """Waits for a deferred save call to return; raises its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def latest_step(self) -> int | None:
        self._join()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self._join()
        return list(self.manager.all_steps())

    def save(self, step: int, state, host: dict[str, Any],
             process: dict[str, Any] | None = None, wait: bool = True) -> None:
        """Saves; ``process``: this process's own JSON values; ``wait=False`` returns
        before an async save is on disk (call ``wait()`` before reading it)."""
        self._join()
        state = _as_tree(state)
        host = {**host, "checksum": host_checksum(host)}
        deferred = self._defer and not wait
        if deferred:   # the step may donate `state`: save a copy of it
            state = _device_copy(state)
        items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
        if process is not None:
            items["process"] = process_json.ProcessJsonSave(process)
        args = ocp.args.Composite(**items)
        if deferred:
            if self._worker is None:
                self._worker = futures.ThreadPoolExecutor(1, thread_name_prefix="ckpt_save")
            self._pending = self._worker.submit(self.manager.save, int(step), args=args,
                                                force=True)
            return
        self.manager.save(int(step), args=args, force=True)
        if wait:
            self.manager.wait_until_finished()

    def wait(self) -> None:
        """Blocks until every pending (async) save is complete."""
        self._join()
        self.manager.wait_until_finished()

    def restore_process(self, step: int) -> dict[str, Any] | None:
        """This process's ``process`` item of checkpoint ``step`` (None if none was saved)."""
        self.wait()
        if not (self.directory / str(int(step)) / "process").exists():
            return None
        got = self.manager.restore(int(step), args=ocp.args.Composite(
            process=process_json.ProcessJsonRestore()))
        return got["process"]

    def restore(self, step: int | None, abstract_state) -> tuple[Any, dict]:
        """``(state, host)`` of checkpoint ``step`` (latest when None), ``state`` of the
        type of ``abstract_state`` (a ``TrainState`` or a dict)."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(_abstract, _as_tree(abstract_state))
        got = self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
        return _like(abstract_state, got["state"]), got["host"]

    def restore_verified(self, step: int, abstract_state) -> tuple[Any, dict, Any]:
        """``(state, host, process)`` of checkpoint ``step``, checked; CheckpointError if damaged."""
        self.wait()
        step = int(step)
        if not (self.directory / str(step)).is_dir():
            raise CheckpointError(f"checkpoint {step} does not exist in {self.directory} "
                                  f"(have {self.all_steps()})")
        reason = None
        with _quiet_failed_read() as quiet:
            try:
                state, host = self.restore(step, abstract_state)
                own = self.restore_process(step)
            except Exception as e:   # orbax/tensorstore raise many kinds; name the reason
                reason = _first_line(e)
                quiet.failed = True
        if reason is not None:   # not chained: the orbax traceback would keep its coroutines alive
            raise CheckpointError(f"checkpoint {step} is damaged: {reason}") from None
        problem = _host_problem(host, step) or _tree_problem(state, abstract_state)
        if problem:
            raise CheckpointError(f"checkpoint {step} is damaged: {problem}")
        return state, host, own

    def move_aside(self, step: int) -> pathlib.Path:
        """Moves checkpoint ``step`` to ``checkpoints_damaged/<step>[.n]``; returns where."""
        self.wait()
        aside = self.directory.parent / f"{self.directory.name}_damaged"
        target, n = aside / str(int(step)), 1
        while target.exists():
            target, n = aside / f"{int(step)}.{n}", n + 1
        if jax.process_index() == 0:   # one mover on a shared file system
            aside.mkdir(exist_ok=True)
            os.rename(self.directory / str(int(step)), target)
        # the manager caches the step list: reopen it on what is left
        self.manager.close()
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        return target

    def close(self) -> None:
        try:
            self._join()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            self.manager.close()


@jax.jit
def _device_copy_jit(leaves: list) -> list:
    # jnp.copy is a copy primitive, not a forwarded input: new buffers, same shardings
    return [jax.numpy.copy(x) for x in leaves]


def _device_copy(tree: dict) -> dict:
    """``tree`` with every ``jax.Array`` leaf copied on its devices (one program), the
    other leaves (numpy arrays, Python scalars) copied on the host."""
    leaves, treedef = jax.tree.flatten(tree)
    on_device = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
    copies = _device_copy_jit([leaves[i] for i in on_device]) if on_device else []
    out = [x if isinstance(x, jax.Array) else x.copy() if hasattr(x, "copy") else x
           for x in leaves]
    for i, c in zip(on_device, copies):
        out[i] = c
    return jax.tree.unflatten(treedef, out)


def host_checksum(host: dict[str, Any]) -> str:
    """SHA-256 of the host JSON (without its ``checksum`` key), keys sorted."""
    body = {k: v for k, v in host.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _host_problem(host: Any, step: int) -> str | None:
    if not isinstance(host, dict):
        return f"host JSON is {type(host).__name__}, not an object"
    missing = sorted({"step", "sampler"} - set(host))
    if missing:
        return f"host JSON lacks {missing}"
    if "checksum" in host and host["checksum"] != host_checksum(host):
        return "host JSON checksum mismatch"
    if int(host["step"]) != step:
        return f"host JSON says step {host['step']}"
    return None


def _as_tree(state) -> dict:
    """The saved layout: ``TrainState.to_tree()`` (a flat dict), or a dict as it is."""
    return state.to_tree() if hasattr(state, "to_tree") else dict(state)


def _like(abstract_state, tree: dict):
    """``tree`` (the saved layout) as the type of ``abstract_state``."""
    return type(abstract_state).from_tree(tree) if hasattr(abstract_state, "to_tree") else tree


def _tree_problem(state, abstract_state) -> str | None:
    state, target = _as_tree(state), _as_tree(abstract_state)
    got_def, want_def = jax.tree.structure(state), jax.tree.structure(target)
    if got_def != want_def:
        return "state tree structure differs from the run's"
    for path_, (a, b) in zip(jax.tree_util.tree_leaves_with_path(state),
                             zip(jax.tree.leaves(state), jax.tree.leaves(target))):
        if a.shape != b.shape or a.dtype != b.dtype:
            return (f"state leaf {jax.tree_util.keystr(path_[0])}: {a.dtype}{list(a.shape)}, "
                    f"expected {b.dtype}{list(b.shape)}")
    return None


_NOISE = re.compile(r"\s*(See full TensorStore details:\s*)?<bound method .*$", re.S)


def _first_line(e: BaseException) -> str:
    """``Type: message`` of the innermost exception in ``e``'s chain that says something
    (orbax wraps TensorStore's error, e.g. ``OUT_OF_RANGE: Error reading "..." in OCDBT
    database at local file "...": ...``, in a message that ends in a bound-method repr),
    on one line of at most 300 characters."""
    if isinstance(e, CheckpointError):    # already one clean line
        return " ".join(str(e).split())
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    best = ""
    for x in chain:                                # outermost first; the innermost wins
        msg = x.args[0] if isinstance(x, KeyError) and x.args and isinstance(x.args[0], str) \
            else str(x)
        text = " ".join(_NOISE.sub("", msg).split())
        if text:
            best = f"{type(x).__name__}: {text}"
    if not best:
        best = type(chain[0]).__name__ if chain else "unknown error"
    return best if len(best) <= 300 else best[:297] + "..."


def _is_late_read_error(exc_type, exc, tb) -> bool:
    """The error a failed read's abandoned TensorStore reads raise when they complete after
    orbax closed its event loop: ``RuntimeError: Event loop is closed`` from asyncio's
    ``call_soon_threadsafe``, or an orbax read coroutine that was never awaited."""
    if exc_type is RuntimeError and str(exc) == "Event loop is closed":
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and "asyncio" in tb.tb_frame.f_code.co_filename
    return False


_late_hooks_installed = False


def _drop_late_read_errors() -> None:
    """After a failed checkpoint read, its abandoned reads may still finish (in TensorStore's
    threads, printing through ``sys.excepthook``/``sys.unraisablehook``) once the loop that
    awaited them is gone: those and only those are dropped from then on."""
    global _late_hooks_installed
    if _late_hooks_installed:
        return
    _late_hooks_installed = True
    excepthook, unraisablehook, threadhook = sys.excepthook, sys.unraisablehook, threading.excepthook

    def on_except(exc_type, exc, tb):
        if not _is_late_read_error(exc_type, exc, tb):
            excepthook(exc_type, exc, tb)

    def on_unraisable(args):
        code = getattr(getattr(args, "object", None), "cr_code", None)
        late = _is_late_read_error(args.exc_type, args.exc_value, args.exc_traceback) or (
            code is not None and "orbax" in code.co_filename)
        if not late:
            unraisablehook(args)

    def on_thread(args):
        if not _is_late_read_error(args.exc_type, args.exc_value, args.exc_traceback):
            threadhook(args)

    sys.excepthook, sys.unraisablehook, threading.excepthook = on_except, on_unraisable, on_thread


class _quiet_failed_read:
    """While a checkpoint is read: what orbax, asyncio and TensorStore print when the read
    fails (``RuntimeError: Event loop is closed`` from callbacks, never-awaited read
    coroutines, TensorStore specs) is held back, and dropped if the read failed (the
    caller reports it in one line); a read that succeeds prints what it printed.
    ``MIXJAX_DEBUG=1`` shows everything."""

    def __init__(self):
        self.failed = False
        self.active = os.environ.get("MIXJAX_DEBUG") != "1"

    def __enter__(self):
        if not self.active:
            return self
        self._held_unraisable, self._held_thread = [], []
        self._unraisablehook, self._threadhook = sys.unraisablehook, threading.excepthook
        sys.unraisablehook = self._held_unraisable.append
        threading.excepthook = self._held_thread.append
        self._stderr = sys.stderr
        sys.stderr.flush()
        sys.stderr = io.StringIO()
        try:
            self._fd = os.dup(2)
            self._tmp = tempfile.TemporaryFile()
            os.dup2(self._tmp.fileno(), 2)
        except OSError:               # no fd 2 to redirect (embedded interpreters)
            self._fd = None
        return self

    def __exit__(self, *exc):
        if not self.active:
            return False
        if self.failed:
            gc.collect()              # the failed read's coroutines report here, into the hooks
        python_text = sys.stderr.getvalue()
        sys.stderr = self._stderr
        native = b""
        if self._fd is not None:
            os.dup2(self._fd, 2)
            os.close(self._fd)
            self._tmp.seek(0)
            native = self._tmp.read()
            self._tmp.close()
        sys.unraisablehook, threading.excepthook = self._unraisablehook, self._threadhook
        if self.failed:
            _drop_late_read_errors()
        if not self.failed and exc[0] is None:   # a good read: nothing is hidden
            sys.stderr.write(python_text)
            sys.stderr.flush()
            if native:
                os.write(2, native)
            for args in self._held_unraisable:
                sys.unraisablehook(args)
            for args in self._held_thread:
                threading.excepthook(args)
        return False


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def params_only_args(abstract_params):
    """orbax restore args that read only ``state.params`` of a checkpoint (onto ``abstract_params``)."""
    return ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, partial_restore=True))


def restore_params(manager, step: int, abstract_params):
    """The params of checkpoint ``step`` (onto ``abstract_params``' shapes).

    orbax warns on every such restore that it reads the sharding from the file;
    that is what is wanted here, so the warning is not shown.
    """
    import warnings
    reason = None
    with _quiet_failed_read() as quiet, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        try:
            return manager.restore(step, args=params_only_args(abstract_params))["state"]["params"]
        except Exception as e:   # a damaged checkpoint: its reason, without orbax's noise
            reason = _first_line(e)
            quiet.failed = True
    raise CheckpointError(reason)
