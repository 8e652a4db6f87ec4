"""Featurisers: DomainBed's MNIST_CNN sizes, MLP, small ResNet; shape-based choice."""

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax.dg.networks import NetSpec, count_params, network
from mixjax.models.cnn import MNISTCNN
from mixjax.models.mlp import MLP
from mixjax.models.resnet import ResNet


def test_mnist_cnn_matches_domainbed_parameter_count_and_shapes():
    m = MNISTCNN(2, rngs=nnx.Rngs(0))
    # torch: conv 2->64, 64->128, 128->128 x2 (3x3, bias) + 4 GroupNorm affine = 371,136 parameters
    convs = (2 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 2 * (128 * 128 * 9 + 128)
    norms = 2 * (64 + 3 * 128)
    assert count_params(nnx.state(m, nnx.Param)) == convs + norms == 371136
    x = jnp.ones((1, 28, 28, 2))
    assert m(x).shape == (1, 128)
    h = m.convs[1](m.convs[0](x))
    assert h.shape == (1, 14, 14, 128)  # stride 2 with PyTorch's padding=1


def test_mnist_cnn_rejects_input_independent_features():
    import pytest

    with pytest.raises(ValueError, match="last width 8"):
        MNISTCNN(1, widths=(8, 8, 8, 8), rngs=nnx.Rngs(0))


def test_mlp_and_resnet_featurisers():
    assert MLP(12, 5, width=8, depth=4, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 4))).shape == (2, 5)
    r = ResNet(1, widths=(8, 16), blocks=2, rngs=nnx.Rngs(0))
    assert r(jnp.ones((1, 8, 8, 1))).shape == (1, 16)


def test_featurizer_is_chosen_by_input_shape_like_domainbed():
    assert NetSpec(input_shape=(28, 28, 2), num_classes=2).kind == "cnn"
    assert NetSpec(input_shape=(64, 64, 3), num_classes=7).kind == "resnet"
    assert NetSpec(input_shape=(10,), num_classes=3).kind == "mlp"
    f = network(NetSpec(input_shape=(16, 16, 3), num_classes=4, featurizer="resnet", resnet_widths=(8, 8)))
    params = f.init(jax.random.key(0))
    assert f.merge(params)(jnp.ones((1, 8, 8, 3))).shape == (1, 4)
