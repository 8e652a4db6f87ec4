"""Domain2Vec (Zhang et al. 2025, arXiv 2506.10952) on mixpile-tiny, training-free: the mixture
of 7 training domains whose meta-domain vector best matches the held-out `legal` domain.

Command:
    mixjax search domain2vec configs/search_tiny_domain2vec.py --out runs/search_tiny_domain2vec
Variants:
    --target average        (the 8 domains' validation sets: set data.domains=None; gives
                             near-uniform weights, 0.10-0.15 each, as it should)
    --meta-domains 32       (32 k-means clusters of the documents instead of their sources)
    --distance kl
Runtime (2026-12-04, 2-core machine under load ~10): 25 s wall, 8 s CPU (mostly imports;
the search itself 14.5 s wall: TF-IDF + logistic regression on <= 400 train documents per
domain, legal's first 400 documents, one SLSQP solve).
Result: 18 meta-domains (the sources of the 7 training domains), classifier accuracy 0.84 on
their validation documents; found mixture code 0.194, conversation 0.241, literature 0.098,
math 0.051, news 0.076, science 0.244, tech_docs 0.097; squared L2 distance to legal's
vector 0.0056 (uniform mixture: 0.0222). Not checked by training a model on it: whether a
closer vector gives a lower legal loss (the paper's DA² assumption) is untested here.

weights.json trains a model with `--set mixing.name=manual --set 'mixing.hparams.weights_by_domain=...'`
(its "use" line); legal then stays held out (data.domains below).
"""

from configs.lm_tiny_uniform import get_config as _base


def get_config():
    cfg = _base()
    cfg.name = "search_tiny_domain2vec"
    cfg.data.domains = ("code", "conversation", "literature", "math", "news", "science",
                        "tech_docs")
    cfg.train.run_dir = "runs/search_tiny_domain2vec/target"
    return cfg


def get_search():
    return {"target": "legal"}
