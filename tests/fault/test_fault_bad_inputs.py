"""The bad-input catalogue: each bad input gives one ``error:`` line naming the culprit,
exit status 2, and leaves nothing behind in the run dir.

The table of cases (input -> message -> exit status) in docs/training.md is generated
from this file: ``MIXJAX_WRITE_DOCS=1 pytest tests/fault/test_fault_bad_inputs.py``
rewrites it; the test fails when the docs and the messages differ.
"""

import json
import os
import pathlib
import re

import pytest

from mixjax import cli

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "training.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"

CONFIG = '''
from mixjax.config import Config


def get_config():
    cfg = Config(name="bad_input")
    cfg.data.corpus = {corpus!r}
    cfg.data.seq_len = 16
    cfg.data.batch_size = 4
    cfg.model.d_model = 16
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.train.steps = 2
    cfg.train.eval_every = 0
    cfg.train.progress = False
    cfg.eval.num_seqs = 2
    cfg.eval.batch_size = 2
    return cfg
'''


def _doc(i: int) -> str:
    return json.dumps({"text": f"document {i} " + "some words of text " * 8}) + "\n"


def _corpus(root: pathlib.Path, **domains) -> pathlib.Path:
    """A directory of <domain>.jsonl files: 60 good documents each unless given."""
    d = root / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        content = domains.get(name, "".join(_doc(i) for i in range(60)))
        (d / f"{name}.jsonl").write_bytes(content if isinstance(content, bytes)
                                           else content.encode())
    return d


def _config(root: pathlib.Path, corpus=None, text: str | None = None) -> pathlib.Path:
    path = root / "bad_input.py"
    path.write_text(text if text is not None else
                    CONFIG.format(corpus=str(corpus or _corpus(root))))
    return path


def _bad_line(root):
    good = [_doc(i) for i in range(60)]
    good[6] = '{"text": "unfinished\n'
    return _config(root, _corpus(root, b="".join(good)))


def _non_utf8(root):
    return _config(root, _corpus(root, a=b"".join(_doc(i).encode() for i in range(9))
                                 + b'{"text": "caf\xe9"}\n' + _doc(10).encode()))


# (input, the command's arguments after `mixjax`, built from a temporary dir)
CASES = [
    ("malformed JSONL line in a domain file",
     lambda r: ["train", _bad_line(r)]),
    ("non-UTF-8 bytes in a domain file",
     lambda r: ["train", _non_utf8(r)]),
    ("empty domain file",
     lambda r: ["train", _config(r, _corpus(r, a=""))]),
    ("too few documents for the validation split",
     lambda r: ["train", _config(r, _corpus(r, a=_doc(0)))]),
    ("unknown corpus name",
     lambda r: ["train", _config(r), "--set", "data.corpus=no-such-corpus"]),
    ("unknown domain in data.domains",
     lambda r: ["train", _config(r), "--set", "data.domains=('a', 'z')"]),
    ("unknown config key",
     lambda r: ["train", _config(r), "--set", "optim.learning_rate=0.1"]),
    ("config value of the wrong type",
     lambda r: ["train", _config(r), "--set", "train.steps='ten'"]),
    ("config file with a syntax error",
     lambda r: ["train", _config(r, text="def get_config(:\n    pass\n")]),
    ("config file that does not exist",
     lambda r: ["train", r / "missing.py"]),
    ("unknown mixer",
     lambda r: ["train", _config(r), "--set", "mixing.name=no_such_mixer"]),
    ("manual weights for an unknown domain",
     lambda r: ["train", _config(r), "--set", "mixing.name=manual",
                "--set", "mixing.hparams={'weights_by_domain': {'a': 1.0, 'z': 2.0}}"]),
    ("manual weights given as a list",
     lambda r: ["train", _config(r), "--set", "mixing.name=manual",
                "--set", "mixing.hparams={'weights_by_domain': [0.5, 0.5]}"]),
    ("manual weights as a non-literal (float('nan'))",
     lambda r: ["train", _config(r), "--set", "mixing.name=manual",
                "--set", "mixing.hparams.weights_by_domain={'a': float('nan'), 'b': 1.0}"]),
    ("negative manual weight",
     lambda r: ["train", _config(r), "--set", "mixing.name=manual",
                "--set", "mixing.hparams={'weights_by_domain': {'a': -1.0, 'b': 1.0}}"]),
    ("unknown mixer hyperparameter",
     lambda r: ["train", _config(r), "--set", "mixing.name=temperature",
                "--set", "mixing.hparams={'temp': 2.0}"]),
    ("unknown tokenizer",
     lambda r: ["train", _config(r), "--set", "data.tokenizer=no_such_tokenizer"]),
    ("gradient mixer whose batches are not stratified",
     lambda r: ["train", _config(r), "--set", "mixing.name=doge", "--set", "grads.target=a",
                "--set", "data.sampler=multinomial"]),
    ("--resume-from a step with no checkpoint",
     lambda r: ["train", _config(r), "--resume-from", "5"]),
    ("eval of a directory that is not a run",
     lambda r: ["eval", r / "nothing_here"]),
]


def _run_case(argv_fn, root: pathlib.Path, capsys):
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / "run"
    argv = [str(a) for a in argv_fn(root)]
    if argv[0] == "train":
        argv += ["--set", f"train.run_dir={run_dir}"]
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err, run_dir


def _normalise(text: str, root: pathlib.Path) -> str:
    """Temporary paths as ``<tmp>``; lists of known names (which grow) as ``...``."""
    return re.sub(r"; known: .*$", "; known: ...", text.replace(str(root), "<tmp>"))


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys):
    rows = []
    for i, (label, argv_fn) in enumerate(CASES):
        root = tmp_path / f"case{i}"
        rc, err, run_dir = _run_case(argv_fn, root, capsys)
        assert rc == 2, (label, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (label, err)
        assert not run_dir.exists(), (label, sorted(run_dir.rglob("*")))
        rows.append((label, _normalise(err, root), rc))
    cell = lambda msg: msg.replace("|", "\\|")
    table = "\n".join(["| input | message | exit |", "|---|---|---|"]
                      + [f"| {label} | `{cell(msg)}` | {rc} |" for label, msg, rc in rows])
    text = DOCS.read_text()
    head, rest = text.split(BEGIN)
    old, tail = rest.split(END)
    if os.environ.get("MIXJAX_WRITE_DOCS") == "1":
        DOCS.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    else:
        assert old.strip() == table, "docs/training.md's bad-input table is stale: rerun with MIXJAX_WRITE_DOCS=1"


# Each case names its culprit: the key, domain, file or line.
NAMES = {
    "malformed JSONL line in a domain file": r"domain 'b': <tmp>/corpus/b\.jsonl:7: malformed",
    "non-UTF-8 bytes in a domain file": r"domain 'a': <tmp>/corpus/a\.jsonl:10: not valid UTF-8",
    "empty domain file": r"domain 'a': zero documents .*a\.jsonl",
    "too few documents for the validation split": r"domain 'a': split 'validation' has zero",
    "unknown corpus name": r"no-such-corpus",
    "unknown domain in data.domains": r"'z'",
    "unknown config key": r"optim.learning_rate",
    "config value of the wrong type": r"train.steps",
    "config file with a syntax error": r"bad_input.py:1: syntax error",
    "config file that does not exist": r"missing.py",
    "unknown mixer": r"no_such_mixer",
    "manual weights for an unknown domain": r"'z'",
    "manual weights given as a list":
        r"'mixing\.hparams\.weights_by_domain': expected Optional\[Mapping\[str, float\]\], got list",
    "manual weights as a non-literal (float('nan'))":
        r"'mixing\.hparams\.weights_by_domain': expected .*Mapping.*got str.*Python literal",
    "negative manual weight": r"\['a'\]",
    "unknown mixer hyperparameter": r"'temp'",
    "unknown tokenizer": r"no_such_tokenizer",
    "gradient mixer whose batches are not stratified": r"data.sampler.*B/K",
    "--resume-from a step with no checkpoint": r"--resume-from 5",
    "eval of a directory that is not a run": r"nothing_here",
}


def test_each_message_names_its_culprit():
    text = DOCS.read_text()
    table = text[text.index(BEGIN):text.index(END)]
    assert [label for label, _ in CASES] == list(NAMES)
    for label, pattern in NAMES.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        assert re.search(pattern, row), (label, row)


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["train", str(tmp_path / "missing.py"), "--debug"]
    from mixjax.config import ConfigError
    with pytest.raises(ConfigError, match="missing.py"):
        cli.main(argv)


def test_a_failed_start_writes_nothing(tmp_path):
    """The sampler is built (and checks its data) before the run dir is created."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from mixjax.data.sources import DataError
    from mixjax.train import loop
    from train_fakes import fake_data, tiny_config
    cfg = tiny_config(tmp_path / "run", steps=1)
    data = fake_data(cfg)

    def make_sampler(weights):
        raise DataError("domain 'b': 1 documents cannot be shared by 2 processes")
    data.make_sampler = make_sampler
    with pytest.raises(DataError, match="domain 'b'"):
        loop.train(cfg, data=data)
    assert not (tmp_path / "run").exists()
    loop.train(cfg, data=fake_data(cfg))     # the same run dir then starts normally


@pytest.mark.parametrize("error", ["nan", "checkpoint", "log"])
def test_run_time_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, error):
    """A diverged run, an unusable checkpoint or log: one line, exit 2 (the messages are
    the loop's own, tested in test_fault_nan/test_fault_checkpoints/test_fault_logs)."""
    from mixjax.train import checkpoint as ckpt_lib
    from mixjax.train import loop
    from mixjax.train import metrics as metrics_lib
    exc = {"nan": loop.NonFiniteLossError("step 4: non-finite training loss nan / gradient "
                                          "norm nan; stopped before writing this step"),
           "checkpoint": ckpt_lib.CheckpointError("checkpoint 4 is damaged: x; no earlier "
                                                  "checkpoint to resume from"),
           "log": metrics_lib.LogFileError("run/metrics.jsonl:2: malformed log record")}[error]

    def train(cfg, **kwargs):
        raise exc
    monkeypatch.setattr(loop, "train", train)
    rc = cli.main(["train", str(_config(tmp_path)), "--set", f"train.run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {exc}"
