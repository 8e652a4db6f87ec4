"""``mixjax export``: a run's parameters as an HF Llama directory or one safetensors file,
and ``model.init_from`` from a run dir or such a file. The Llama naming itself is
:mod:`mixjax.models.hf_io`, the expert kinds' :func:`mixjax.models.moe.to_mixtral` and
:func:`mixjax.models.demix.to_hf`; this module reads run dirs and checkpoints (train/),
which the models layer never imports.

    mixjax export RUN_DIR --format hf [--out DIR] [--step N] [--plugin MODULE ...]
    mixjax export RUN_DIR --format safetensors [--out FILE]

A safetensors file's metadata: ``mixjax_model`` (the model config as JSON),
``mixjax_kind``, ``mixjax_step``, ``mixjax_run`` and, for ``model.kind=demix``,
``mixjax_domains`` (the JSON list of the run's domains: expert ``e`` is domain ``e``).
``model.init_from`` of such a file checks ``mixjax_kind`` against ``model.kind``; the
loop checks ``mixjax_domains`` against the run's domains (docs/experts.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys

from mixjax.models import hf_io
from mixjax.models.hf_io import ExportError, TransformerConfig


def _codec(kind: str):
    """``(config class, abstract_init, to_tensors, from_tensors)`` of an exportable kind."""
    from mixjax.models import transformer
    if kind == "moe":
        from mixjax.models import moe
        return moe.MoEConfig, moe.abstract_init, moe.to_mixtral, moe.from_mixtral
    if kind == "demix":
        from mixjax.models import demix
        return demix.DEMixConfig, demix.abstract_init, demix.to_hf, demix.from_hf
    return TransformerConfig, transformer.abstract_init, hf_io.to_llama, None


def load_init_params(source: str, cfg: TransformerConfig, abstract_params: dict) -> tuple[dict, dict]:
    """``(params, info)`` for ``model.init_from``: a mixjax run dir (its latest checkpoint),
    a safetensors file (the naming of ``cfg``'s kind: Llama, Mixtral for moe, the DEMix
    naming for demix; :func:`export_run`) or an HF Llama dir
    (:func:`mixjax.models.hf_io.load_init_params`). ``info["domains"]``: the expert order of
    a DEMix file or run (``mixjax_domains``), when known."""
    import jax
    import numpy as np
    path = pathlib.Path(source)
    where = f"model.init_from={source!r}"
    kind = getattr(cfg, "KIND", "transformer")
    if not (path.is_dir() and (path / "config.json").exists() and (path / "checkpoints").exists()):
        meta = {}
        if path.is_file():
            try:
                meta = hf_io.load_safetensors_metadata(path)
            except Exception as e:
                raise ExportError(f"{where}: not a safetensors file ({type(e).__name__}: "
                                  f"{e})") from None
        if meta.get("mixjax_kind", kind) != kind:
            raise ExportError(f"{where}: the file holds a model.kind={meta['mixjax_kind']!r} "
                              f"model; this run has model.kind={kind!r}")
        params, info = hf_io.load_init_params(source, cfg, abstract_params,
                                              from_tensors=_codec(kind)[3])
        if "mixjax_domains" in meta:
            info["domains"] = json.loads(meta["mixjax_domains"])
        return params, info
    from mixjax.train import checkpoint as ckpt_lib
    ck = ckpt_lib.Checkpointer(path / "checkpoints")
    step = ck.latest_step()
    if step is None:
        ck.close()
        raise ExportError(f"{where}: the run has no checkpoint")
    try:
        params = ckpt_lib.restore_params(ck.manager, step, abstract_params)
    except Exception as e:   # orbax: shape/structure mismatch
        raise ExportError(f"{where}: checkpoint step {step} does not fit this model "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
    finally:
        ck.close()
    params = jax.tree.map(lambda x, a: np.asarray(x).astype(a.dtype), params, abstract_params)
    info = {"kind": "mixjax", "path": str(path), "step": step}
    if kind == "demix" and (path / "run_info.json").exists():
        info["domains"] = json.loads((path / "run_info.json").read_text()).get("domains")
    return params, info


# -- mixjax export -------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("run_dir", help="a run directory written by `mixjax train`")
    parser.add_argument("--format", choices=("hf", "safetensors"), default="hf",
                        help="hf: a Hugging Face Llama directory; safetensors: one file")
    parser.add_argument("--out", default=None,
                        help="output directory (hf) or file (safetensors); default: "
                             "RUN_DIR/export_hf or RUN_DIR/model.safetensors")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")


def export_run(run_dir: str | pathlib.Path, fmt: str = "hf", out: str | None = None,
               step: int | None = None) -> pathlib.Path:
    """Writes the run's parameters (checkpoint ``step``, latest when None); returns the path."""
    from mixjax import config as config_lib
    from mixjax.train import checkpoint as ckpt_lib
    run_dir = pathlib.Path(run_dir)
    info_path = run_dir / "run_info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no run_info.json)")
    info = json.loads(info_path.read_text())
    cfg = config_lib.load_run_config(run_dir)
    kind = cfg.model.kind
    if kind not in ("transformer", "moe", "demix"):
        raise ExportError(f"model.kind={kind!r} has no export format (the transformer exports "
                          "as a Llama, moe and demix as safetensors)")
    if kind != "transformer" and fmt == "hf":
        raise ExportError(f"model.kind={kind!r} exports as --format safetensors ("
                          + ("Mixtral naming, mixjax.models.moe.to_mixtral" if kind == "moe"
                             else "DEMix naming, mixjax.models.demix.to_hf")
                          + "); --format hf writes a Llama")
    cfg_cls, abstract_init, to_tensors, _ = _codec(kind)
    mcfg = cfg_cls(**info["model"])
    hf_io.check_expressible(mcfg)     # before reading any checkpoint
    target = pathlib.Path(out) if out else (run_dir / ("export_hf" if fmt == "hf"
                                                       else "model.safetensors"))
    if target.exists() and (target.is_file() or any(target.iterdir())):
        raise ExportError(f"output {str(target)!r} already exists; pick another --out")
    _, abstract, _ = abstract_init(mcfg)
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    step = ck.latest_step() if step is None else step
    if step is None:
        ck.close()
        raise FileNotFoundError(f"run dir {str(run_dir)!r} has no checkpoint")
    try:
        params = ckpt_lib.restore_params(ck.manager, step, abstract)
    except ckpt_lib.CheckpointError as e:
        raise ExportError(f"run dir {str(run_dir)!r}: checkpoint {step} cannot be read: {e}") \
            from None
    finally:
        ck.close()
    tensors = to_tensors(params, mcfg)
    meta = {"mixjax_model": json.dumps(dataclasses.asdict(mcfg)), "mixjax_step": str(step),
            "mixjax_run": str(run_dir), "mixjax_kind": kind}
    if kind == "demix":
        if not info.get("domains"):
            raise ExportError(f"{str(info_path)!r} names no domains (the DEMix expert order)")
        meta["mixjax_domains"] = json.dumps(list(info["domains"]))
    tok = info.get("tokenizer") or {}
    if fmt == "safetensors":
        target.parent.mkdir(parents=True, exist_ok=True)
        hf_io.save_safetensors(tensors, target, meta)
        return target
    target.mkdir(parents=True, exist_ok=True)
    hf_io.save_safetensors(tensors, target / "model.safetensors", meta)
    hc = hf_io.hf_config(mcfg, max_positions=cfg.data.seq_len, tokenizer=tok)
    (target / "config.json").write_text(json.dumps(hc, indent=2) + "\n")
    gen = {k: hc[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (target / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tok.get("name") == "hf":
        _write_hf_tokenizer(tok, target)
    return target


def _write_hf_tokenizer(tok: dict, target: pathlib.Path) -> None:
    src = pathlib.Path(tok["path"])
    src = src / "tokenizer.json" if src.is_dir() else src
    if not src.exists():
        raise FileNotFoundError(f"the run's tokenizer file {str(src)!r} is gone; cannot copy it")
    shutil.copyfile(src, target / "tokenizer.json")
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(str(src))
    names = {k: t.id_to_token(tok[f"{k}_id"]) for k in ("eos", "pad", "bos")}
    special = {f"{k}_token": v for k, v in names.items() if v is not None}
    (target / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (target / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
         "add_eos_token": False, **special}, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    from mixjax import plugins
    plugins.load_for_run(args.run_dir, log=lambda line: print(line, file=sys.stderr))
    try:
        path = export_run(args.run_dir, args.format, args.out, args.step)
    except (ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
