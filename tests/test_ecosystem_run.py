"""One tiny run through the CLI (Parquet corpus, HF tokenizer, TensorBoard + W&B offline), then:
provenance in run_info.json, tracker outputs, export to safetensors / an HF Llama dir with an exact
parameter round trip, model.init_from, and the bad-input errors of export/init_from/trackers."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
pq = pytest.importorskip("pyarrow.parquet")

import jax  # noqa: E402

from mixjax import cli  # noqa: E402
from mixjax import config as config_lib  # noqa: E402
from mixjax.models import hf_io, transformer  # noqa: E402
from mixjax.train import checkpoint as ckpt_lib  # noqa: E402
from mixjax.train import loop  # noqa: E402

from ecosystem_fixtures import WORDS, tiny_lm_config, train_hf_bpe  # noqa: E402
from test_ecosystem_hf_data import write_parquet_dir  # noqa: E402

HERE = pathlib.Path(__file__).parent
HAS_WANDB = __import__("importlib").util.find_spec("wandb") is not None


def _config_file(tmp, steps=3):
    p = tmp / "cfg.py"
    p.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom ecosystem_fixtures import tiny_lm_config\n"
        "def get_config():\n    cfg = tiny_lm_config('runs/unused', 'unused', steps=%d)\n"
        "    cfg.model.tie_embeddings = False\n    return cfg\n" % (str(HERE), steps))
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eco_run")
    mp = pytest.MonkeyPatch()   # the datasets cache in tmp, for this module only
    mp.setenv("HF_DATASETS_CACHE", str(tmp / "hf_cache"))
    mp.setenv("WANDB_SILENT", "true")
    pdir = write_parquet_dir(tmp / "pq")
    tok = train_hf_bpe(tmp / "tokenizer.json")
    args = ["train", str(_config_file(tmp)), "--out", str(tmp / "run"),
            "--set", f"data.corpus={pdir}", "--set", "data.tokenizer.kind=hf",
            "--set", f"data.tokenizer.path={tok}", "--set", f"data.cache_dir={tmp / 'cache'}"]
    if HAS_WANDB:
        args += ["--set", "train.trackers=[tensorboard,wandb]",
                 "--set", "train.tracker_args={'wandb': {'mode': 'offline', 'project': 'eco'}}"]
    code = cli.main(args)
    assert code == 0
    yield {"tmp": tmp, "dir": tmp / "run", "tok": tok, "corpus": pdir, "cfg": _config_file(tmp)}
    mp.undo()


def test_run_info_provenance(run):
    info = json.loads((run["dir"] / "run_info.json").read_text())
    import mixjax
    assert info["mixjax_version"] == mixjax.__version__
    assert info["libraries"]["jax"] == jax.__version__
    for lib in ("flax", "optax", "orbax-checkpoint", "grain"):
        assert info["libraries"][lib]
    assert info["devices"] and info["mesh"] == {"data": 1, "expert": 1, "fsdp": 1, "tensor": 1}
    git = info["git"]
    here = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if here.returncode == 0:
        assert git["commit"] == here.stdout.strip() and isinstance(git["dirty"], bool)
    from mixjax.data import tokenizers
    assert info["tokenizer"]["name"] == "hf"
    assert info["tokenizer"]["checksum"] == tokenizers.from_config("hf", str(run["tok"])).checksum()
    assert info["domains"] == sorted(WORDS) and info["model"]["vocab_size"] == 384


def test_version_and_python_m():
    out = subprocess.run([sys.executable, "-m", "mixjax", "--version"], capture_output=True,
                         text=True, cwd=HERE.parent,
                         env={**__import__("os").environ, "PYTHONPATH": str(HERE.parent)})
    import mixjax
    assert out.returncode == 0 and out.stdout.strip() == f"mixjax {mixjax.__version__}"


def test_tensorboard_and_wandb_outputs(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run["dir"] / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"metrics/loss", "eval/loss_avg", "weights/code", "metrics/loss/prose"} <= tags
    jl = [json.loads(l) for l in (run["dir"] / "metrics.jsonl").read_text().splitlines()]
    tb_loss = [e.value for e in acc.Scalars("metrics/loss")]
    np.testing.assert_allclose(tb_loss, [r["loss"] for r in jl], rtol=1e-6)   # JSONL == TB
    if not HAS_WANDB:
        pytest.skip("wandb not installed")
    run_id = (run["dir"] / "wandb_id.txt").read_text().strip()
    files = list((run["dir"] / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    # The .wandb file is W&B's protobuf record log; the keys, run name and config are stored
    # as strings in it (wandb has no public reader for offline files).
    raw = files[0].read_bytes()
    for key in ("metrics/loss", "metrics/loss/code", "weights/prose", "eval/loss_avg", "eval/table",
                "eco:run", "tracker_args"):
        assert key.encode() in raw, key
    tables = list(files[0].parent.glob("files/media/table/eval/table_*.table.json"))
    assert len(tables) == 1                       # one evaluation (the final one) -> one table
    table = json.loads(tables[0].read_text())
    last = [json.loads(l) for l in (run["dir"] / "eval.jsonl").read_text().splitlines()][-1]
    w = [json.loads(l) for l in (run["dir"] / "weights.jsonl").read_text().splitlines()][-1]
    assert table["columns"] == ["domain", "loss", "ppl", "weight"]
    assert [[d, last[f"loss/{d}"], last[f"ppl/{d}"], w["weights"][d]] for d in sorted(WORDS)] \
        == table["data"]


def _params(run_dir):
    info = json.loads((run_dir / "run_info.json").read_text())
    mcfg = transformer.TransformerConfig(**info["model"])
    _, abstract, _ = transformer.abstract_init(mcfg)
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    p = ckpt_lib.restore_params(ck.manager, ck.latest_step(), abstract)
    ck.close()
    return mcfg, p


def test_export_round_trips_parameters_exactly(run, tmp_path, capsys):
    mcfg, params = _params(run["dir"])
    assert cli.main(["export", str(run["dir"]), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    out = tmp_path / "hf"
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "generation_config.json", "tokenizer.json",
                                               "tokenizer_config.json", "special_tokens_map.json"}
    hc = json.loads((out / "config.json").read_text())
    assert (hc["vocab_size"], hc["hidden_size"], hc["tie_word_embeddings"]) == (384, 32, False)
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<|endoftext|>" and special["pad_token"] == "<pad>"
    tensors = hf_io.load_safetensors(out / "model.safetensors")
    assert tensors["lm_head.weight"].shape == (384, 32)
    back = hf_io.from_llama(tensors, mcfg, "test")
    flat_a, flat_b = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(back)
    assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
    for (k, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(k))
    # a single safetensors file, same tensors
    assert cli.main(["export", str(run["dir"]), "--format", "safetensors",
                     "--out", str(tmp_path / "m.safetensors")]) == 0
    single = hf_io.load_safetensors(tmp_path / "m.safetensors")
    assert set(single) == set(tensors)
    # nothing is overwritten
    assert cli.main(["export", str(run["dir"]), "--out", str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_rope_permutation_keeps_attention_scores():
    """q.k per head is the same in mixjax's interleaved layout and HF's rotate_half layout."""
    rng = np.random.default_rng(0)
    h, t, base = 8, 5, 10000.0
    q, k = rng.normal(size=(1, t, 1, h)), rng.normal(size=(1, t, 1, h))
    mj = lambda x: np.asarray(transformer.rope(x.astype(np.float32), base))
    perm = hf_io._perm(h)

    def hf_rope(x):   # transformers' apply_rotary_pos_emb with rotate_half
        inv = base ** (-np.arange(0, h, 2) / h)
        ang = np.arange(t)[:, None] * inv[None]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        rot = np.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1)
        return x * cos[None, :, None] + rot * sin[None, :, None]

    s_mj = np.einsum("bqnh,bknh->bqk", mj(q), mj(k))
    s_hf = np.einsum("bqnh,bknh->bqk", hf_rope(q[..., perm]), hf_rope(k[..., perm]))
    np.testing.assert_allclose(s_mj, s_hf, rtol=1e-5, atol=1e-5)


def test_init_from_exported_and_run_dir(run, tmp_path):
    mcfg, params = _params(run["dir"])
    assert cli.main(["export", str(run["dir"]), "--out", str(tmp_path / "hf")]) == 0
    for source in (tmp_path / "hf", run["dir"], tmp_path / "hf" / "model.safetensors"):
        cfg = config_lib.load(run["cfg"], [f"data.corpus={run['corpus']}", "data.tokenizer.kind=hf",
                                           f"data.tokenizer.path={run['tok']}",
                                           f"data.cache_dir={run['tmp'] / 'cache'}",
                                           f"model.init_from={source}",
                                           f"train.run_dir={tmp_path / 'r2'}"])
        tr = loop.Trainer(cfg)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(tr.initial_state.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert tr.init_from["path"] == str(source)


def test_export_of_gelu_model_names_the_feature(tmp_path):
    cfg = transformer.TransformerConfig(vocab_size=16, d_model=8, num_heads=2, num_layers=1,
                                        mlp="gelu")
    with pytest.raises(hf_io.ExportError, match="model.mlp='gelu'.*always gated"):
        hf_io.to_llama({}, cfg)


def test_init_from_mismatch_and_bad_trackers_exit_2(run, tmp_path, capsys):
    base = ["train", str(run["cfg"]), "--out", str(tmp_path / "r"),
            "--set", f"data.corpus={run['corpus']}", "--set", "data.tokenizer.kind=hf",
            "--set", f"data.tokenizer.path={run['tok']}",
            "--set", f"data.cache_dir={run['tmp'] / 'cache'}"]
    assert cli.main(["export", str(run["dir"]), "--out", str(tmp_path / "hf")]) == 0
    import pyarrow as pa
    pq.write_table(pa.table({"content": ["a b c"] * 5}), tmp_path / "x.parquet")
    (tmp_path / "spec.json").write_text(json.dumps({"domains": [
        {"name": "x", "kind": "hf", "path": str(tmp_path / "x.parquet")}]}))
    cases = [
        (["--set", f"data.spec={tmp_path / 'spec.json'}"],
         r"domain 'x': the HF dataset has no column 'text' \(columns: \['content'\]\)"),
        (["--set", f"model.init_from={tmp_path / 'hf'}", "--set", "model.d_model=64"],
         "model.init_from.*hidden_size=32 but model.d_model gives 64"),
        (["--set", "model.init_from=/no/such/dir"], "model.init_from.*no such file"),
        (["--set", "train.trackers=[mlflow]"], "train.trackers.*unknown tracker 'mlflow'"),
    ]
    for extra, match in cases:
        code = cli.main(base + extra)
        err = capsys.readouterr().err
        assert code == 2, err
        import re
        assert re.search(match, err), err
        assert not (tmp_path / "r" / "checkpoints").exists()


def test_wandb_selected_but_not_installed_exits_2(tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    code = cli.main(["train", str(_config_file(tmp_path)), "--out", str(tmp_path / "r"),
                     "--set", "train.trackers=[wandb]"])
    assert code == 2
    assert "tracker 'wandb' needs the 'wandb' package: pip install 'mixjax[wandb]'" in \
        capsys.readouterr().err
