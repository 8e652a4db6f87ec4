"""Skill-it's skills graph from a swarm of one-hot proxies (mixjax.search.skillit_graph).

Rule (``HazyResearch/aioli: mixing_law_fitting.py``, ``skills_graph``): row i from the
run trained on domain i alone, ``A_ij = (L_j(0) - L_j(T)) / L_j(0)``. The tiny swarm
has three byte-level domains: a short periodic pattern (learnt in a few steps: its
own loss falls most), English text, and uniformly random bytes (nothing to learn).
"""

import json

import numpy as np
import pytest

from mixjax import cli
from mixjax import data as data_lib
from mixjax.config import Config
from mixjax.data.sources import ListSource
from mixjax.mixing.skillit import SkillIt
from mixjax.search import skillit_graph
from mixjax.train.data import TrainData


def test_graph_from_losses_is_the_reference_rule():
    rng = np.random.default_rng(0)
    k, seeds = 3, 2
    mixtures = np.tile(np.eye(k), (seeds, 1))[[3, 1, 5, 0, 4, 2]]   # any proxy order
    l0 = rng.uniform(4.0, 6.0, size=(k * seeds, k + 1))              # + one held-out column
    lt = l0 - rng.uniform(-0.2, 2.0, size=l0.shape)
    want = np.zeros((k, k))
    for i in range(k):                 # mean over the seeds of domain i's one-hot runs
        rows = [(l0[p, :k] - lt[p, :k]) / l0[p, :k] for p in range(k * seeds)
                if mixtures[p, i] == 1.0]
        want[i] = np.mean(rows, axis=0)
    np.testing.assert_allclose(skillit_graph.graph_from_losses(l0, lt, mixtures), want)
    with pytest.raises(ValueError, match="not one-hot"):
        skillit_graph.graph_from_losses(l0[:1], lt[:1], np.array([[0.5, 0.5, 0.0]]))
    with pytest.raises(ValueError, match=r"domain\(s\) #\[2\]"):
        skillit_graph.graph_from_losses(l0[:2], lt[:2], np.eye(3)[:2])


def _three_domains(cfg: Config) -> TrainData:
    rng = np.random.default_rng(0)
    pattern = np.frombuffer(b"abcdefgh", np.uint8).astype(np.int32)
    docs = {
        "periodic": [np.roll(np.tile(pattern, 128), -int(rng.integers(8))) for _ in range(60)],
        "text": list(data_lib.corpus_sources("mixpile-tiny")["literature"]),
        "random": [rng.integers(0, 256, 1024).astype(np.int32) for _ in range(60)],
    }
    sources = {d: ListSource(v, domain=d) for d, v in docs.items()}
    tok = data_lib.tokenizers.get("byte")
    eval_sets = data_lib.eval_arrays(sources, seq_len=cfg.data.seq_len, split="validation",
                                     num_sequences=cfg.eval.num_seqs, tokenizer=tok)

    def make_sampler(weights):
        return data_lib.DomainSampler(sources, seq_len=cfg.data.seq_len,
                                      batch_size=cfg.data.batch_size, weights=np.asarray(weights),
                                      tokenizer=tok, mode=cfg.data.sampler, seed=0)

    n = data_lib.token_counts(sources, tokenizer=tok, split="train")
    return TrainData(domains=tuple(sources), token_counts=tuple(float(n[d]) for d in sources),
                     vocab_size=tok.vocab_size, pad_id=tok.pad_id, eval_sets=eval_sets,
                     make_sampler=make_sampler)


def test_tiny_one_hot_swarm_gives_a_non_negative_graph_led_by_the_learnable_domain(tmp_path):
    cfg = Config(name="skills_graph_test")
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.sampler = 32, 8, "stratified"
    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 16, 1, 2
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 0
    cfg.train.steps, cfg.train.eval_every, cfg.train.ckpt_every = 25, 0, 0
    cfg.eval.num_seqs, cfg.eval.batch_size = 4, 4
    data = _three_domains(cfg)
    out = tmp_path / "graph.npy"
    graph = skillit_graph.estimate(cfg, out, data=data, strategy="vmap", log=lambda _: None)
    assert graph.shape == (3, 3) and np.all(np.isfinite(graph)) and np.all(graph >= 0)
    np.testing.assert_array_equal(np.load(out), graph)
    rec = json.loads(out.with_suffix(".json").read_text())
    raw = np.array(rec["raw"])
    assert rec["domains"] == ["periodic", "text", "random"]
    np.testing.assert_array_equal(graph, np.maximum(raw, 0.0))
    # recomputed from the recorded losses: row i = proxy i (one-hot on domain i)
    l0, lt = np.array(rec["initial_loss"]), np.array(rec["final_loss"])
    np.testing.assert_allclose(raw, (l0 - lt) / l0)
    diag = np.diagonal(graph)
    assert np.argmax(diag) == 0 and diag[0] > diag[1] > diag[2], graph   # periodic helps itself most
    assert diag[2] < 0.05, graph                 # random bytes: nothing to learn
    # the file is a graph the Skill-it mixer accepts
    a = SkillIt(graph=str(out), domains=data.domains).graph_matrix(3)
    assert a.shape == (3, 3)


@pytest.mark.parametrize("out, message", [("graph.txt", ".npy"), ("exists.npy", "exists")])
def test_skillit_graph_cli_refuses_bad_out(tmp_path, capsys, out, message):
    (tmp_path / "exists.npy").write_bytes(b"keep")
    config = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
                 / "lm_tiny_uniform.py")
    assert cli.main(["search", "skillit-graph", config, "--out", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "exists.npy").read_bytes() == b"keep"
