"""A tfds domain never downloads at run time; an unprepared dataset says how to prepare it."""

import pytest

from mixjax import data
from mixjax.data.sources import DataError


def test_tfds_source_does_not_download_and_says_how_to_prepare(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def data_source(name, **kwargs):   # tfds' own default is download=True
        calls.append(kwargs)
        if not kwargs.get("download", True):
            raise AssertionError(f"Dataset {name}: could not find data in {kwargs['data_dir']}")
        raise RuntimeError("would download")

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(DataError, match=r"domain 'news': cannot open tfds dataset 'lm1b' split "
                                        r"'train': AssertionError: .*not downloaded at run time: "
                                        r"prepare it first with `tfds build lm1b "
                                        r"--file_format=array_record --data_dir="):
        data.TfdsSource("lm1b", split="train", domain="news", data_dir=str(tmp_path))
    assert calls[0]["download"] is False
