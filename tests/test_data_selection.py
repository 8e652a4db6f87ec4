"""Data selection (mixjax.data.selection): drop, resample, resume, run data and provenance."""

import json

import numpy as np
import pytest

from mixjax import config as config_lib
from mixjax.data import DomainSampler, selection, splits
from mixjax.data.sources import DataError, ListSource

DOCS = [f"<{i:03d}>" + "abcdefgh"[i % 8] * (5 + i % 7) for i in range(120)]


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def _sampler(src, seed=0):
    return DomainSampler({"a": src}, seq_len=32, batch_size=4, split=None, seed=seed, chunk=4)


def test_drop_never_yields_a_dropped_document(tmp_path):
    src = splits.split_source(ListSource(DOCS, "a"), "train")
    dropped = {i for i in range(120) if i % 3 == 0}
    w = {selection.content_hash(d): (0.0 if i in dropped else 1.0) for i, d in enumerate(DOCS)}
    path = tmp_path / "sel.jsonl"
    selection.write(path, w, scorer="test")
    sel = selection.load(path)
    kept = selection.select(src, sel, "drop", seed=0)
    assert 0 < len(kept) < len(src)
    sampler = _sampler(kept)
    text = "".join(sampler.tokenizer.decode(row) for _ in range(40)
                   for row in next(sampler)["tokens"])
    seen = {int(text[k + 1:k + 4]) for k in range(len(text) - 4)
            if text[k] == "<" and text[k + 4] == ">"}
    assert seen and not seen & dropped                   # several epochs, no dropped doc
    assert seen == {int(src[i][1:4]) for i in range(len(src))} - dropped


def test_resample_frequencies_follow_the_weights(tmp_path):
    docs = [f"doc {i}" for i in range(3000)]
    cls = np.arange(3000) % 4                           # weights 0, 1, 2, 4 by class
    weight = np.asarray([0.0, 1.0, 2.0, 4.0])[cls]
    path = tmp_path / "sel.jsonl"
    selection.write(path, {selection.content_hash(d): float(x) for d, x in zip(docs, weight)},
                    scorer="test")
    drawn = selection.select(ListSource(docs, "a"), selection.load(path), "resample", seed=3)
    assert len(drawn) == 3000
    counts = np.bincount(cls[drawn.indices], minlength=4)
    expected = 3000 * np.asarray([0, 750, 1500, 3000]) / 5250
    assert counts[0] == 0
    chi2 = float((((counts - expected) ** 2)[1:] / expected[1:]).sum())
    assert chi2 < 13.8                                  # chi-square, 2 dof, p = 0.001
    # the draw is a function of (seed, domain, file): again the same, another seed not
    again = selection.select(ListSource(docs, "a"), selection.load(path), "resample", seed=3)
    other = selection.select(ListSource(docs, "a"), selection.load(path), "resample", seed=4)
    assert np.array_equal(again.indices, drawn.indices)
    assert not np.array_equal(other.indices, drawn.indices)


def test_a_run_resumes_the_selected_stream_exactly_and_records_the_file(tmp_path):
    from mixjax.train.data import build_data
    for d in ("a", "b"):
        _write_jsonl(tmp_path / f"{d}.jsonl", [f"{d}{x}" for x in DOCS])
    (tmp_path / "spec.json").write_text(json.dumps({"domains": [
        {"name": d, "kind": "jsonl", "path": str(tmp_path / f"{d}.jsonl")} for d in "ab"]}))
    w = {selection.content_hash(f"{d}{x}"): float(i % 4) for d in "ab"
         for i, x in enumerate(DOCS)}
    sha = selection.write(tmp_path / "sel.jsonl", w, scorer="test")
    cfg = config_lib.Config(name="t")
    cfg.data.spec, cfg.data.cache_dir = str(tmp_path / "spec.json"), ""
    cfg.data.seq_len, cfg.data.batch_size = 16, 4
    cfg.data.split_min_docs, cfg.data.split_min_bytes = 2, 0
    cfg.data.selection.path, cfg.data.selection.mode = str(tmp_path / "sel.jsonl"), "resample"
    data = build_data(cfg)
    assert data.selection["sha256"] == sha and data.selection["mode"] == "resample"
    s1 = data.make_sampler(np.asarray([0.5, 0.5]))
    for _ in range(5):
        next(s1)
    state = json.loads(json.dumps(s1.get_state()))      # as the checkpoint holds it
    want = [next(s1)["tokens"] for _ in range(5)]
    s2 = build_data(cfg).make_sampler(np.asarray([0.5, 0.5]))
    s2.set_state(state)
    assert all(np.array_equal(a, next(s2)["tokens"]) for a in want)
    # a resume under another selection file is refused
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_info.json").write_text(json.dumps({"data_selection": data.selection}))
    selection.check_resume(tmp_path / "run", data.selection)
    with pytest.raises(config_lib.ConfigError, match="data.selection"):
        selection.check_resume(tmp_path / "run", {**data.selection, "sha256": "0" * 64})


def test_bad_files_and_modes_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"format": selection.FORMAT}) + "\n" + '{"hash": "x", "weight": -1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: weight must be finite and >= 0"):
        selection.load(bad)
    cfg = config_lib.Config(name="t")
    cfg.data.selection.mode = "reweight"
    with pytest.raises(config_lib.ConfigError, match="data.selection.mode.*drop, resample or weight"):
        config_lib.validate(cfg)
    src = ListSource(DOCS[:5], "a")
    selection.write(tmp_path / "zero.jsonl", {}, scorer="none", default=0.0)
    with pytest.raises(DataError, match="leaves no document"):
        selection.select(src, selection.load(tmp_path / "zero.jsonl"), "drop", seed=0)


def test_data_select_cli_writes_a_file_the_run_reads(tmp_path, capsys):
    from mixjax.cli import main
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_jsonl(corpus / "a.jsonl", DOCS)
    out = tmp_path / "len.jsonl"
    assert main(["data", "select", str(corpus), "--out", str(out), "--arg", "min_chars=10"]) == 0
    assert "120 documents" in capsys.readouterr().out
    sel = selection.load(out)
    assert sel.scorer == "length(min_chars=10)"
    assert all(sel.weight(d) == float(len(d) >= 10) for d in DOCS)
    assert main(["data", "select", str(corpus), "--out", str(out), "--scorer", "nope"]) == 2


def _letter_docs():
    # doc i: one letter repeated; weight by letter. Distinct lengths keep the hashes distinct.
    docs = [("abc"[i % 3]) * (3 + i) for i in range(60)]
    weight = {"a": 1.0, "b": 3.0, "c": 0.5}
    return docs, weight


def test_weight_mode_gives_each_sequence_the_mean_weight_of_its_target_tokens(tmp_path):
    docs, weight = _letter_docs()
    selection.write(tmp_path / "w.jsonl", {selection.content_hash(d): weight[d[0]] for d in docs},
                    scorer="letter")
    sel = selection.load(tmp_path / "w.jsonl")
    kw = dict(seq_len=16, batch_size=4, split=None, seed=1, chunk=4)
    s1 = selection.weighted_sampler({"a": ListSource(docs, "a")}, selection=sel, **kw)
    tok = s1.tokenizer
    for _ in range(6):
        b = next(s1)
        for row, s in zip(b["tokens"], b["sample_weight"]):
            # the weight of target token t: its own letter's, or for EOS the letter before it
            letters = [tok.decode([x]) or tok.decode([row[t - 1]]) for t, x in enumerate(row)
                       if t >= 1]
            assert s == pytest.approx(np.mean([weight[c] for c in letters]), abs=1e-4)
    state = json.loads(json.dumps(s1.get_state()))
    want = [next(s1) for _ in range(4)]
    s2 = selection.weighted_sampler({"a": ListSource(docs, "a")}, selection=sel, **kw)
    s2.set_state(state)
    for w in want:
        got = next(s2)
        assert np.array_equal(got["tokens"], w["tokens"])
        assert np.array_equal(got["sample_weight"], w["sample_weight"])


def test_the_step_weights_each_sequence_by_sample_weight():
    import jax
    import jax.numpy as jnp
    import optax
    from mixjax import mixing
    from mixjax.core import state as state_lib
    from mixjax.core import step as step_lib
    emb = jax.random.normal(jax.random.PRNGKey(0), (12, 12))
    apply = lambda p, x: p["emb"][x]   # noqa: E731
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 7), 1, 12)
    s = jnp.asarray([1.0, 0.0, 2.0, 0.5])
    mixer, tx = mixing.get("uniform"), optax.sgd(0.1)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=2, pad_id=0,
                                    jit=False)
    st = state_lib.init_state({"emb": emb}, tx, mixer, 2, 0)
    batch = {"tokens": tokens, "domain_id": jnp.asarray([0, 1, 0, 1], jnp.int32),
             "sampling_weights": jnp.full((2,), 0.5), "sample_weight": s}
    _, m = step(st, batch)
    tl, tm = step_lib.token_losses(apply, {"emb": emb}, tokens, 0)
    want = float((s[:, None] * tl * tm).sum() / (s[:, None] * tm).sum())
    assert float(m["objective"]) == pytest.approx(want, rel=1e-6)


def test_a_run_in_weight_mode_hands_the_weights_to_the_step(tmp_path):
    from mixjax.train import loop
    from train_fakes import tiny_config
    docs, weight = _letter_docs()
    _write_jsonl(tmp_path / "a.jsonl", docs)
    (tmp_path / "spec.json").write_text(json.dumps({"domains": [
        {"name": "a", "kind": "jsonl", "path": str(tmp_path / "a.jsonl")}]}))
    selection.write(tmp_path / "w.jsonl", {selection.content_hash(d): weight[d[0]] for d in docs},
                    scorer="letter")
    cfg = tiny_config(tmp_path / "run", steps=2, eval_every=0, ckpt_every=0)
    cfg.data.spec, cfg.data.cache_dir, cfg.data.batch_size = str(tmp_path / "spec.json"), "", 4
    cfg.data.split_min_docs, cfg.data.split_min_bytes = 2, 0
    cfg.eval.num_seqs = cfg.eval.batch_size = 2
    cfg.data.selection.path, cfg.data.selection.mode = str(tmp_path / "w.jsonl"), "weight"
    # the loop hands the sampler's per-sequence weights to the step, row for row
    trainer = loop.Trainer(cfg)
    assert trainer.data.selection["mode"] == "weight"
    host = trainer.data.make_sampler(np.asarray([1.0]))
    hb = next(host)
    while len(set(hb["sample_weight"].tolist())) < 2:   # a batch whose rows differ
        hb = next(host)
    placed = loop.batch_maker(trainer)(hb, np.asarray([1.0]), 0)
    np.testing.assert_array_equal(np.asarray(placed["sample_weight"]), hb["sample_weight"])
    state, m = trainer.train_step(trainer.initial_state, placed)
    assert int(state.step) == 1 and np.isfinite(float(m["objective"]))
