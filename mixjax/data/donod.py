"""DONOD: model-intrinsic data pruning by one-step weight changes, ranked by TOPSIS
(``mixjax data select --method donod``).

Hu, Yang, Wu & Zhou, "DONOD: Efficient and Generalizable Instruction Fine-Tuning for LLMs via
Model-Intrinsic Dataset Pruning", arXiv 2504.14810 (v1 titled "... Robust and Generalizable
..."), section 3. No reference code was published ("code will be made publicly available"; none
found by repository or code search), so this follows the paper's definitions (read from the
abstract and a restatement of its section 3; DON taken as a benefit, NOD as a cost, is our
reading of "favoring samples that stabilize parameter norms" / "weight instability").

For each document D_i, W are the model's weights and W' = W - lr g_i the weights after one
plain gradient step on D_i alone (g_i: the gradient of its mean token loss). Over the weight
tensors l (every parameter leaf, or those matching ``param_filter``):

* **DON** (Delta of Norm) ``= sum_l ||W_l||_F - ||W'_l||_F``: the step's change of the weight
  norm; positive when the document *shrinks* the weights (the paper's proxy for generalisation);
* **NOD** (Norm of Delta) ``= sum_l ||W_l - W'_l||_F = lr sum_l ||g_l||_F``: the size of the
  step, large for noisy or unlearnable documents (the paper's weight instability).

**TOPSIS** (Hwang & Yoon 1981) ranks the N documents on the two criteria: the columns of the
decision matrix X f[N, 2] are vector-normalised (``r_ij = x_ij / ||x_.j||_2``), weighted
(``v_ij = w_j r_ij``, weights summing to 1; default equal), the ideal point takes each column's
best value (max for DON, a benefit; min for NOD, a cost) and the anti-ideal its worst; with
``d+``/``d-`` the Euclidean distances to them, a document's closeness is ``d- / (d+ + d-)``
(0.5 when all documents are equal). The top ceil(f N) documents by closeness are kept (ties:
the lower index), over the whole corpus as in the paper.

Choices (the paper fine-tunes an LLM on instruction data; here a causal LM on documents):
each document is its first ``seq_len + 1`` tokens (tokenizer's EOS appended, PAD after), its
loss the mean token loss of that window (:func:`mixjax.mixing.example_grads.example_loss_vector`);
the step is plain SGD at ``lr`` (default: the run's peak ``optim.lr``; an Adam first step would
be ``lr sign(g)`` and make NOD the same for every document); the paper computes the metrics on
the output layer of an 8B model for cost, here every parameter by default (``param_filter``
restricts them, e.g. the head). The N one-step updates are one ``vmap`` over documents of
``grad`` (chunks of ``chunk`` rows, one compiled shape), never N trainings, and DON uses
``||W|| - ||W'|| = (2 lr <W, g> - lr^2 ||g||^2) / (||W|| + ||W'||)``, free of the cancellation of
subtracting two nearly equal float32 norms.

The metrics are cached per document under ``cache_dir`` (``donod-<key>.npz``), keyed by content
hash and by ``key`` = sha256 of the model's parameters, the tokenizer, ``seq_len``, ``lr`` and
``param_filter``: a second selection with other TOPSIS weights or budget recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mixjax.data.sources import DataError, DomainSource

CRITERIA = ("don", "nod")
BENEFIT = (True, False)          # DON: larger is better; NOD: smaller is better


# -- TOPSIS -------------------------------------------------------------------------------------
def topsis(matrix: np.ndarray, benefit: Sequence[bool], weights: Sequence[float] | None = None
           ) -> np.ndarray:
    """Closeness f64[N] of each row of ``matrix`` f[N, M] to the ideal (module docstring)."""
    x = np.asarray(matrix, np.float64)
    if x.ndim != 2 or x.shape[1] != len(benefit):
        raise ValueError(f"TOPSIS wants an [N, {len(benefit)}] matrix, got shape {x.shape}")
    w = np.full(x.shape[1], 1.0 / x.shape[1]) if weights is None else np.asarray(weights, float)
    if w.shape != (x.shape[1],) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise DataError(f"TOPSIS weights must be {x.shape[1]} finite numbers >= 0 with a positive "
                        f"sum, got {list(np.atleast_1d(w))}")
    w = w / w.sum()
    norm = np.sqrt((x * x).sum(axis=0))
    v = x / np.where(norm > 0, norm, 1.0) * w
    good = np.asarray(benefit, bool)
    ideal = np.where(good, v.max(axis=0), v.min(axis=0))
    anti = np.where(good, v.min(axis=0), v.max(axis=0))
    d_plus = np.sqrt(((v - ideal) ** 2).sum(axis=1))
    d_minus = np.sqrt(((v - anti) ** 2).sum(axis=1))
    total = d_plus + d_minus
    return np.where(total > 0, d_minus / np.where(total > 0, total, 1.0), 0.5)


def keep_top(closeness: np.ndarray, budget: float) -> np.ndarray:
    """Indices of the ceil(budget N) highest closeness values (ties: the lower index)."""
    c = np.asarray(closeness, np.float64)
    k = max(1, math.ceil(budget * len(c)))
    return np.sort(np.argsort(-c, kind="stable")[:k])


# -- DON / NOD over one vmap of per-document gradients ------------------------------------------
def donod_metrics(token_loss_fn, params, tokens, *, lr: float, param_filter: str | None = None,
                  chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(don f64[N], nod f64[N])`` for the rows of ``tokens`` i32[N, S+1]: one SGD step at
    ``lr`` on each row alone (module docstring). ``token_loss_fn(params, batch)`` is the
    gradient engines' (:data:`mixjax.mixing.grad_algebra.TokenLossFn`)."""
    import jax
    import jax.numpy as jnp

    from mixjax.mixing.example_grads import example_loss_vector
    from mixjax.mixing.grad_algebra import merge_leaves, param_mask, split_leaves

    sel, rest = split_leaves(params, param_mask(params, param_filter))
    lr = float(lr)

    def one(row):
        def loss(s):
            batch = {"tokens": row[None], "domain_id": jnp.zeros((1,), jnp.int32)}
            return example_loss_vector(token_loss_fn, merge_leaves(s, rest), batch)[0]
        g = jax.grad(loss)(sel)
        don, nod = jnp.float32(0.0), jnp.float32(0.0)
        for w, gl in zip(jax.tree.leaves(sel), jax.tree.leaves(g)):
            w, gl = w.astype(jnp.float32), gl.astype(jnp.float32)
            wn = jnp.sqrt(jnp.sum(w * w))
            gg = jnp.sum(gl * gl)
            wg = jnp.sum(w * gl)
            wn_new = jnp.sqrt(jnp.maximum(wn * wn - 2 * lr * wg + lr * lr * gg, 0.0))
            denom = wn + wn_new
            don += jnp.where(denom > 0, (2 * lr * wg - lr * lr * gg) / jnp.where(
                denom > 0, denom, 1.0), 0.0)
            nod += lr * jnp.sqrt(gg)
        return don, nod

    run = jax.jit(jax.vmap(one))
    tokens = np.asarray(tokens, np.int32)
    n = tokens.shape[0]
    size = max(1, min(int(chunk), n))
    don, nod = np.zeros(n), np.zeros(n)
    for start in range(0, n, size):
        part = tokens[start:start + size]
        m = len(part)
        if m < size:                                  # one compiled shape: pad with a copy
            part = np.concatenate([part, np.repeat(part[-1:], size - m, axis=0)])
        d, o = run(jnp.asarray(part))
        don[start:start + m] = np.asarray(d, np.float64)[:m]
        nod[start:start + m] = np.asarray(o, np.float64)[:m]
    return don, nod


def document_rows(docs: Sequence[Any], tokenizer, seq_len: int) -> np.ndarray:
    """i32[N, seq_len + 1]: each document's first tokens (+ EOS), PAD after."""
    from mixjax.data.packing import tokenize
    out = np.full((len(docs), seq_len + 1), tokenizer.pad_id, np.int32)
    for i, d in enumerate(docs):
        ids = np.concatenate([np.asarray(tokenize(d, tokenizer), np.int32).reshape(-1),
                              np.asarray([tokenizer.eos_id], np.int32)])[:seq_len + 1]
        out[i, :len(ids)] = ids
    return out


# -- the scoring model (a run dir's latest checkpoint) -------------------------------------------
class ScoringModel:
    """What DONOD needs of a model: its token loss function, parameters, tokenizer and a key."""

    def __init__(self, token_loss_fn: Callable, params, tokenizer, *, lr: float, name: str):
        self.token_loss_fn, self.params, self.tokenizer = token_loss_fn, params, tokenizer
        self.lr, self.name = float(lr), name

    def digest(self) -> str:
        """sha256 of the parameters (paths, shapes, dtypes and bytes) and the tokenizer."""
        import jax
        h = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.params):
            a = np.asarray(leaf)
            h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        cs = getattr(self.tokenizer, "checksum", None)
        h.update(str(cs() if callable(cs) else type(self.tokenizer).__name__).encode())
        return h.hexdigest()


def load_run_model(run_dir: str | pathlib.Path) -> ScoringModel:
    """The latest checkpoint of a training run dir (any ``model.kind``) as a ScoringModel."""
    from mixjax import config as config_lib
    from mixjax.core import step as step_lib
    from mixjax.train.data import build_tokenizer
    from mixjax.train.reference import load_reference
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {str(run_dir)!r} is not a run dir (no config.json)")
    cfg = config_lib.validate(config_lib.load_run_config(run_dir))
    tok, vocab = build_tokenizer(cfg)
    apply, params = load_reference(str(run_dir), vocab)

    def token_loss_fn(p, batch):
        return step_lib.token_losses(apply, p, batch["tokens"], tok.pad_id)

    return ScoringModel(token_loss_fn, params, tok, lr=cfg.optim.lr, name=str(run_dir))


# -- cached metrics and the command's driver ------------------------------------------------------
def cached_metrics(model: ScoringModel, docs: Sequence[Any], hashes: Sequence[str],
                   cache_dir: str | pathlib.Path | None, *, seq_len: int,
                   param_filter: str | None, chunk: int = 64
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(don, nod, number computed)``; documents already in the cache (same content hash, same
    model, tokenizer, seq_len, lr and param_filter) are read back, the rest computed."""
    def compute(idx):
        rows = document_rows([docs[i] for i in idx], model.tokenizer, seq_len)
        return donod_metrics(model.token_loss_fn, model.params, rows, lr=model.lr,
                             param_filter=param_filter, chunk=chunk)

    if cache_dir is None:
        d, o = compute(range(len(docs)))
        return d, o, len(docs)
    key = hashlib.sha256(json.dumps({"model": model.digest(), "seq_len": int(seq_len),
                                     "lr": model.lr, "param_filter": param_filter},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir) / f"donod-{key}.npz"
    known: dict[str, tuple[float, float]] = {}
    if path.is_file():
        with np.load(path) as z:
            known = {h: (float(a), float(b)) for h, a, b in
                     zip(z["hashes"].tolist(), z["don"], z["nod"])}
    missing = sorted({h: i for i, h in enumerate(hashes) if h not in known}.values())
    if missing:
        d, o = compute(missing)
        for i, a, b in zip(missing, d, o):
            known[hashes[i]] = (float(a), float(b))
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(known)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hashes=np.asarray(keys), don=np.asarray([known[h][0] for h in keys]),
                 nod=np.asarray([known[h][1] for h in keys]))
        tmp.replace(path)
    don = np.asarray([known[h][0] for h in hashes])
    nod = np.asarray([known[h][1] for h in hashes])
    return don, nod, len(missing)


def select_donod(sources: Mapping[str, DomainSource], model: ScoringModel, budget: float, *,
                 cache_dir: str | None = None, seq_len: int = 128, param_filter: str | None = None,
                 weights: Sequence[float] | None = None, chunk: int = 64
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """``({content hash: 1 or 0} for every document, info)``: the top ceil(f N) documents of the
    corpus by TOPSIS closeness over (DON, NOD)."""
    from mixjax.data.selection import corpus_documents
    docs, hashes, domains = corpus_documents(sources)
    if not docs:
        raise DataError("the corpus has no documents to score")
    don, nod, computed = cached_metrics(model, docs, hashes, cache_dir, seq_len=seq_len,
                                        param_filter=param_filter, chunk=chunk)
    closeness = topsis(np.stack([don, nod], axis=1), BENEFIT, weights)
    keep = set(keep_top(closeness, budget).tolist())
    out: dict[str, float] = {}
    for i, h in enumerate(hashes):       # a duplicated document is kept if any copy is chosen
        out[h] = max(out.get(h, 0.0), 1.0 if i in keep else 0.0)
    info = {"method": "donod", "budget": budget, "model": model.name, "lr": model.lr,
            "seq_len": seq_len, "param_filter": param_filter, "computed": computed,
            "cached": len(set(hashes)) - computed,          # distinct documents
            "selected": {d: sum(1 for i in keep if domains[i] == d) for d in sources}}
    return out, info
