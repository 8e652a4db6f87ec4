"""``mixjax demix``: add or remove a domain expert of a trained DEMix run (``model.kind=demix``).

    mixjax demix RUN_DIR --add NEW_DOMAIN --closest-on NEW.jsonl --out new.safetensors
    mixjax demix RUN_DIR --add NEW_DOMAIN --from EXISTING_DOMAIN --out new.safetensors
    mixjax demix RUN_DIR --remove DOMAIN --out smaller.safetensors
    mixjax demix RUN_DIR --add|--remove ... --out-run NEW_RUN_DIR [--set KEY=VALUE ...]

Reads the run's latest checkpoint and writes its parameters with one expert more (a copy
of ``--from``, or of the expert with the highest mean domain posterior on the first 64
documents of ``--closest-on``, tokenised with the run's tokenizer: DEMix sec. 6,
``mixjax.models.demix.closest_expert``) or one fewer, in every DEMix layer. The file is
what ``mixjax export --format safetensors`` writes for a DEMix run (the naming of
:func:`mixjax.models.demix.to_hf`; metadata ``mixjax_model`` with the new expert count and
``mixjax_domains``, the run's domains with the new one last or the removed one left out).
Continue training from the parameters with ``model.kind=demix``,
``model.hparams.num_experts`` = the new count, ``data.domains`` in that order and
``model.init_from=FILE`` (:func:`mixjax.train.export.load_init_params`; the loop checks
the order). ``--out-run`` carries the whole train state instead (optimiser moments,
mixer and sampler state, step) into a new run dir that resumes where the run stopped:
:mod:`mixjax.train.demix_state`. docs/experts.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

from mixjax.config import ConfigError
from mixjax.models.hf_io import ExportError


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("run_dir")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--add", metavar="DOMAIN", help="name of the new domain's expert")
    what.add_argument("--remove", metavar="DOMAIN", help="domain whose expert is removed")
    parser.add_argument("--from", dest="source", metavar="DOMAIN",
                        help="--add: copy this domain's expert")
    parser.add_argument("--closest-on", metavar="JSONL",
                        help="--add: copy the expert with the highest posterior on these "
                             "documents (JSON lines with a 'text' field)")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="output safetensors file (the parameters)")
    out.add_argument("--out-run", metavar="NEW_RUN_DIR",
                     help="a new run dir holding the whole train state at the same step "
                          "(optimiser, mixer, sampler; mixjax.train.demix_state): resume it "
                          "with `mixjax train NEW_RUN_DIR/config.json --resume`")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="--out-run: override a key of the new "
                        "run's config (e.g. a per-domain mixing.hparams)")


def _plan(run_dir, *, add, remove, source, closest_on):
    """``(cfg, info, domains)`` of the run after the cheap checks of the edit's arguments
    (each bad one: one line naming it)."""
    from mixjax import config as config_lib
    run_dir = pathlib.Path(run_dir)
    info_path = run_dir / "run_info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no run_info.json)")
    cfg = config_lib.load_run_config(run_dir)
    if cfg.model.kind != "demix":
        raise ConfigError(f"{str(run_dir)!r}: model.kind={cfg.model.kind!r}; mixjax demix "
                          "edits model.kind='demix' runs")
    info = json.loads(info_path.read_text())
    domains = list(info["domains"])
    if add is not None:
        if add in domains:
            raise ConfigError(f"--add {add!r}: the run already has an expert for it")
        if (source is None) == (closest_on is None):
            raise ConfigError("--add needs exactly one of --from DOMAIN and --closest-on JSONL")
        if source is not None and source not in domains:
            raise ConfigError(f"--from {source!r}: not a domain of the run; known: "
                              f"{', '.join(domains)}")
    elif remove not in domains:
        raise ConfigError(f"--remove {remove!r}: not a domain of the run; known: "
                          f"{', '.join(domains)}")
    elif len(domains) == 1:
        raise ConfigError(f"--remove {remove!r}: the run's only expert")
    return cfg, info, domains


def _edit(cfg, domains, apply, params, *, add, remove, source, closest_on):
    """``(new_domains, index, how)``: the edit as a map over domains
    (:func:`mixjax.train.demix_state.domain_map`)."""
    from mixjax.models import demix
    from mixjax.train import demix_state
    if add is None:
        new, index = demix_state.domain_map(domains, remove=remove)
        return new, index, {"removed": remove}
    if source is not None:
        j = domains.index(source)
    else:
        tokens, pad = _documents(cfg, closest_on)
        j = demix.closest_expert(apply, params, tokens, pad_id=pad)
    new, index = demix_state.domain_map(domains, add=add, source=j)
    return new, index, {"added": add, "copied_from": domains[j]}


def edit_run(run_dir, *, add=None, remove=None, source=None, closest_on=None, out):
    """Writes the edited parameters (module docstring); returns ``(path, domains, how)``."""
    from mixjax.models import demix, hf_io
    from mixjax.train import reference
    cfg, info, domains = _plan(run_dir, add=add, remove=remove, source=source,
                               closest_on=closest_on)
    target = pathlib.Path(out)
    if target.exists():
        raise FileExistsError(f"output {str(target)!r} already exists; pick another --out")
    apply, params = reference.load_reference(str(run_dir), info["model"]["vocab_size"])
    domains, index, how = _edit(cfg, domains, apply, params, add=add, remove=remove,
                                source=source, closest_on=closest_on)
    params = demix.select_experts(params, index)
    mcfg = dataclasses.replace(demix.DEMixConfig(**info["model"]), num_experts=len(domains))
    target.parent.mkdir(parents=True, exist_ok=True)
    hf_io.save_safetensors(demix.to_hf(params, mcfg), target, {
        "mixjax_kind": "demix", "mixjax_domains": json.dumps(domains),
        "mixjax_model": json.dumps(dataclasses.asdict(mcfg)),
        "mixjax_edit": json.dumps(how), "mixjax_run": str(run_dir)})
    return target, domains, how


def edit_run_state(run_dir, *, add=None, remove=None, source=None, closest_on=None, out_run,
                   overrides=()):
    """Writes ``out_run``, the run with its whole train state edited
    (:mod:`mixjax.train.demix_state`); returns ``(out_run, domains, how)``."""
    from mixjax.models import demix
    from mixjax.train import demix_state
    cfg, info, domains = _plan(run_dir, add=add, remove=remove, source=source,
                               closest_on=closest_on)
    names = domains + [add] if add is not None else [d for d in domains if d != remove]
    new_cfg, tx, new_abstract = demix_state.plan_run(out_run, cfg=cfg, info=info,
                                                     new_domains=names, overrides=overrides)
    step, state, host = demix_state.restore_run(run_dir, cfg, info)
    apply = demix.abstract_init(demix.DEMixConfig(**info["model"]))[0]
    new, index, how = _edit(cfg, domains, apply, state.params, add=add, remove=remove,
                            source=source, closest_on=closest_on)
    demix_state.write_run(run_dir, out_run, new_cfg=new_cfg, tx=tx, new_abstract=new_abstract,
                          new_domains=new, index=index, how=how, step=step, state=state,
                          host=host)
    return pathlib.Path(out_run), new, how


def _documents(cfg, path, limit: int = 64):
    """``(tokens, pad_id)``: up to ``limit`` documents of a JSON-lines file as one padded
    token batch."""
    from mixjax.data import tokenizers
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--closest-on {str(p)!r}: no such file")
    tc = cfg.data.tokenizer
    tok = tokenizers.from_config(tc.kind, tc.path, tc.args)
    seq = cfg.data.seq_len + 1
    rows = []
    for n, line in enumerate(p.read_text().splitlines()):
        if line.strip() and len(rows) < limit:
            try:
                text = json.loads(line)[cfg.data.text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"--closest-on {str(p)!r}:{n + 1}: not a JSON object with "
                                  f"a {cfg.data.text_field!r} field") from None
            ids = tok.encode_array(text)[:seq]
            if len(ids) >= 2:
                rows.append(np.pad(ids, (0, seq - len(ids)), constant_values=tok.pad_id))
    if not rows:
        raise ConfigError(f"--closest-on {str(p)!r}: no document with 2 or more tokens")
    return np.stack(rows).astype(np.int32), tok.pad_id


def run(args: argparse.Namespace) -> int:
    what = dict(add=args.add, remove=args.remove, source=args.source,
                closest_on=args.closest_on)
    try:
        if args.out_run:
            path, domains, how = edit_run_state(args.run_dir, out_run=args.out_run,
                                                overrides=args.overrides, **what)
        else:
            path, domains, how = edit_run(args.run_dir, out=args.out, **what)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {how}; experts in order: {', '.join(domains)}")
    if args.out_run:
        print(f"resume with: mixjax train {path}/config.json --resume")
    return 0
