"""Evaluating a finished (or running) LM run from its checkpoints, and the eval table."""

from __future__ import annotations

import pathlib

from mixjax import config as config_lib
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import evaluate as eval_lib
from mixjax.core import step as step_lib
from mixjax.train.data import TrainData, build_data
from mixjax.train.lm_model import build_model


def evaluate_run(run_dir: str | pathlib.Path, *, step: int | None = None,
                 split: str | None = None, num_seqs: int | None = None,
                 data: TrainData | None = None) -> dict:
    """Evaluates checkpoint ``step`` (latest when None) of a run on its eval sets."""
    run_dir = pathlib.Path(run_dir)
    cfg = config_lib.load_run_config(run_dir)
    if split is not None:
        cfg.eval.split = split
    if num_seqs is not None:
        cfg.eval.num_seqs = num_seqs
    config_lib.validate(cfg)
    data = data if data is not None else build_data(cfg)
    domains = tuple(data.domains)
    spec = build_model(cfg, data.vocab_size)
    apply, abstract_params = spec.apply, spec.abstract_params
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    step = ck.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"run dir {str(run_dir)!r} has no checkpoint")
    try:
        params = ckpt_lib.restore_params(ck.manager, step, abstract_params)
    except Exception as e:   # a missing or damaged checkpoint: one line naming it
        ck.close()
        raise ckpt_lib.CheckpointError(f"run dir {str(run_dir)!r}: checkpoint {step} cannot be "
                                       f"read: {ckpt_lib._first_line(e)}") from e
    ck.close()
    heldout = tuple(getattr(data, "heldout_domains", ()))
    batches = eval_lib.prepare_eval_sets(data.eval_sets, domains + heldout, cfg.eval.num_seqs,
                                         cfg.eval.batch_size, data.pad_id)
    result = eval_lib.evaluate_with_heldout(step_lib.make_eval_fn(apply, data.pad_id), params,
                                            batches, domains, heldout,
                                            cfg.eval.target_mixture)
    return {"step": step, "split": cfg.eval.split, **result}


def format_eval(result: dict, domains: tuple[str, ...]) -> str:
    """A plain-text table of an evaluation result."""
    lines = [f"{'domain':<16} {'loss':>8} {'ppl':>10}"]
    for d in domains:
        lines.append(f"{d:<16} {result[f'loss/{d}']:>8.4f} {result[f'ppl/{d}']:>10.3f}")
    lines.append(f"{'uniform avg':<16} {result['loss_avg']:>8.4f} {result['ppl_avg']:>10.3f}")
    lines.append(f"{'target avg':<16} {result['loss_target']:>8.4f} {result['ppl_target']:>10.3f}")
    lines.append(f"{'worst':<16} {'':>8} {result['ppl_worst']:>10.3f}")
    for d in sorted(k[len("loss/"):] for k in result if k.startswith("loss/")):
        if d not in domains:   # held out: evaluated, not trained on, not in the averages
            lines.append(f"{d + ' (held out)':<16} {result[f'loss/{d}']:>8.4f} "
                         f"{result[f'ppl/{d}']:>10.3f}")
    return "\n".join(lines)
