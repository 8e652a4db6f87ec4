import re

import numpy as np
import pytest

from mixjax import data
from mixjax.data import splits
from mixjax.data.sources import DataError, ListSource


def _srcs():
    return {d: ListSource([f"<{d}{i}>" * 3 for i in range(300)], d) for d in ("x", "y")}


def test_eval_arrays_fixed_and_from_their_split_only():
    a = data.eval_arrays(_srcs(), seq_len=15, num_sequences=5)
    b = data.eval_arrays(_srcs(), seq_len=15, num_sequences=5)
    assert list(a) == ["x", "y"]
    for d in a:
        assert a[d].shape == (5, 16) and a[d].dtype == np.int32
        np.testing.assert_array_equal(a[d], b[d])
    tok = data.tokenizers.get("byte")
    for d in a:
        idx = splits.split_indices(300, seed=0, domain=d)
        # rows are spread over the split (not consecutive): decode each on its own
        seen = {int(m) for row in a[d] for m in re.findall(rf"<{d}(\d+)>", tok.decode(row))}
        assert seen and seen <= set(idx["validation"].tolist())
        assert seen.isdisjoint(idx["train"].tolist())
    t = data.eval_arrays(_srcs(), seq_len=15, num_sequences=5, split="test")
    assert not np.array_equal(t["x"], a["x"])


def test_eval_arrays_short_split_pads_or_fails():
    src = {"s": ListSource(["abc"] * 100, "s")}    # 2 validation docs -> 8 tokens
    arr = data.eval_arrays(src, seq_len=15, num_sequences=4)
    assert arr["s"].shape == (1, 16)
    np.testing.assert_array_equal(arr["s"][0, 8:], 256)
    assert data.eval_token_counts(arr, pad_id=256) == {"s": 7}
    with pytest.raises(DataError, match="domain 's': validation split holds only 1 sequences"):
        data.eval_arrays(src, seq_len=15, num_sequences=4, strict=True)
    with pytest.raises(ValueError, match="eval split must be one of"):
        data.eval_arrays(src, seq_len=15, split="train")
