"""DomainBed's ResNet featurisers: torchvision's ResNet-18/50 in flax, frozen BatchNorm, feature
dropout, and ImageNet weights from a local torchvision state_dict file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg.networks import NetSpec, _keys, count_params, network, training
from mixjax.models import tv_resnet_weights as W
from mixjax.models.tv_resnet import TVResNet

# torchvision's parameter counts (sum of p.numel() over model.parameters()) minus fc:
# resnet18 11,689,512 - (512 * 1000 + 1000); resnet50 25,557,032 - (2048 * 1000 + 1000)
TORCHVISION_PARAMS = {"resnet18": 11_689_512 - 513_000, "resnet50": 25_557_032 - 2_049_000}
# len(model.state_dict()) minus fc.weight, fc.bias and one num_batches_tracked per BatchNorm
TORCHVISION_KEYS = {"resnet18": 122 - 2 - 20, "resnet50": 320 - 2 - 53}


def abstract(arch, channels=3):
    return nnx.eval_shape(lambda: TVResNet(arch, channels, rngs=nnx.Rngs(0)))


def random_state_dict(arch, seed=0, channels=3):
    """A torchvision-named, torchvision-shaped state_dict with random values (running_var > 0)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for path, var in W.flat_variables(abstract(arch, channels)).items():
        name = W.torch_name(path)
        value = W.to_torch_layout(path, rng.normal(0, 0.05, var.shape).astype(np.float32))
        sd[name] = np.abs(value) + 0.5 if name.endswith("running_var") else value
    sd["fc.weight"] = rng.normal(size=(1000, 512 if arch == "resnet18" else 2048)).astype(np.float32)
    sd["bn1.num_batches_tracked"] = np.asarray(7, np.int64)
    return sd


def concrete(module_abstract, seed=0):
    """A concrete module with random arrays, built without running the initialisers (fast)."""
    graphdef, state = nnx.split(module_abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape).astype(np.float32)), state)
    return nnx.merge(graphdef, state)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_architecture_matches_torchvision(arch):
    spec = NetSpec(input_shape=(224, 224, 3), num_classes=7, featurizer=arch)
    f = network(spec)
    assert f.abstract.featurizer.n_outputs == {"resnet18": 512, "resnet50": 2048}[arch]
    params = jax.eval_shape(f.init, jax.random.key(0))
    n_classifier = f.abstract.featurizer.n_outputs * 7 + 7
    assert count_params(params) - n_classifier == TORCHVISION_PARAMS[arch]
    assert len(W.flat_variables(abstract(arch))) == TORCHVISION_KEYS[arch]
    out = jax.eval_shape(lambda p, x: f.merge(p)(x), params, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert out.shape == (2, 7)


def test_batchnorm_is_frozen_and_out_of_the_trained_parameters():
    spec = NetSpec(input_shape=(16, 16, 3), num_classes=3, featurizer="resnet18")
    f = network(spec)
    leaf_names = lambda tree: {_keys(p)[-1] for p, _ in jax.tree_util.tree_leaves_with_path(tree) if _keys(p)}  # noqa: E731
    params = jax.eval_shape(f.init, jax.random.key(0))
    assert "mean" not in leaf_names(params) and "var" not in leaf_names(params)
    assert {"scale", "bias"} <= leaf_names(params)  # BN's affine weight and bias still train (as DomainBed)
    assert leaf_names(f.constants) == {"mean", "var"}
    # the ERM step's state (params and Adam moments) holds no running statistic either
    hp = {k: jnp.float32(v) for k, v in H.split_static(H.draw(A.get("erm").hparam_space(False), 0, 0))[1].items()}
    alg = A.get("erm")(net=spec, num_envs=2, static=(("batch_size", 2),))
    state = jax.eval_shape(alg.init, jax.random.key(0), hp)
    assert "mean" not in leaf_names(state) and "var" not in leaf_names(state)
    # eval-mode BN: an image's features do not depend on the rest of the batch; the statistics are used
    net = nnx.merge(f.graphdef, jax.tree.map(lambda x: jnp.full(x.shape, 0.05, x.dtype), params), f.constants)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
    np.testing.assert_allclose(net.featurizer(x)[:1], net.featurizer(x[:1]), rtol=1e-4, atol=1e-5)
    shifted = jax.tree.map(lambda c: c + 1.0, f.constants)
    net2 = nnx.merge(f.graphdef, jax.tree.map(lambda x: jnp.full(x.shape, 0.05, x.dtype), params), shifted)
    assert not np.allclose(net.featurizer(x), net2.featurizer(x))


def test_feature_dropout_only_in_training_mode():
    spec = NetSpec(input_shape=(16, 16, 3), num_classes=3, featurizer="resnet18")
    f = network(spec)
    params = jax.eval_shape(f.init, jax.random.key(0))
    net = nnx.merge(f.graphdef, jax.tree.map(lambda x: jnp.full(x.shape, 0.05, x.dtype), params), f.constants)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)
    z = net.featurizer(x)
    assert (z != 0).mean() > 0.5
    with training(jax.random.key(1), 0.5):
        zd, zd2 = net.featurizer(x), net.featurizer(x)
    kept = zd != 0
    assert 0.45 < float(kept[z != 0].mean()) < 0.55  # p = 0.5 of 4,096 features
    np.testing.assert_allclose(zd[kept], 2.0 * z[kept], rtol=1e-5)  # inverted dropout: / (1 - p)
    assert not np.array_equal(zd, zd2)  # a second forward in the same step draws a fresh mask
    with training(jax.random.key(1), jnp.float32(0.0)):
        np.testing.assert_array_equal(net.featurizer(x), z)
    np.testing.assert_array_equal(net.featurizer(x), z)  # outside training mode: deterministic
    # DomainBed's registry: resnet_dropout default 0, random choice of {0, 0.1, 0.5}
    space = H.network_space("resnet50")
    assert space["resnet_dropout"].default == 0.0
    draws = {H.draw(space, h, 0)["resnet_dropout"] for h in range(1, 30)}
    assert draws == {0.0, 0.1, 0.5} and H.network_space("resnet") == {}


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_pretrained_weights_load_by_torchvision_name(tmp_path, fmt):
    sd = random_state_dict("resnet18")
    path = tmp_path / f"r18.{fmt}"
    if fmt == "npz":
        np.savez(path, **sd)
    else:
        from safetensors.numpy import save_file

        save_file(sd, str(path))
    f = network(NetSpec(input_shape=(16, 16, 3), num_classes=3, featurizer="resnet18", pretrained=str(path)))
    # running statistics: the frozen constants
    np.testing.assert_array_equal(f.constants["featurizer"]["network"]["layer2"][0]["downsample_bn"]["var"].get_value(),
                                  sd["layer2.0.downsample.1.running_var"])
    # trained weights: what init puts into the torchvision part (conv kernels transposed to HWIO)
    net = concrete(abstract("resnet18"))
    W.load_into(net, W.read_file(path))
    np.testing.assert_array_equal(net.layer3[1].conv2.kernel.get_value(), sd["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(net.bn1.scale.get_value(), sd["bn1.weight"])
    back = W.state_dict(net)  # the inverse mapping gives the file back (fc and counters ignored)
    assert set(back) == {k for k in sd if not k.startswith("fc.") and "num_batches" not in k}
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k])


def test_init_puts_the_pretrained_weights_in_and_a_fresh_classifier(tmp_path):
    sd = random_state_dict("resnet18", seed=3, channels=3)
    np.savez(tmp_path / "w.npz", **sd)
    f = network(NetSpec(input_shape=(8, 8, 1), num_classes=3, featurizer="resnet18", pretrained=str(tmp_path / "w.npz")))
    params = jax.jit(f.init)(jax.random.key(0))
    conv1 = np.asarray(params["featurizer"]["network"]["conv1"]["kernel"].get_value())
    # DomainBed's nc != 3 adaptation: input channel i copies pretrained channel i % 3
    np.testing.assert_array_equal(conv1, sd["conv1.weight"][:, :1].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(params["featurizer"]["network"]["layer4"][1]["bn2"]["bias"].get_value()),
                                  sd["layer4.1.bn2.bias"])
    assert np.abs(np.asarray(params["classifier"]["kernel"].get_value())).sum() > 0


def test_mismatched_weights_name_the_key(tmp_path, capsys):
    sd = random_state_dict("resnet18")
    m = abstract("resnet18")
    bad = dict(sd, **{"layer2.0.conv1.weight": np.zeros((128, 64, 5, 5), np.float32)})
    with pytest.raises(W.WeightsError, match=r"key 'layer2.0.conv1.weight' has shape \(128, 64, 5, 5\).*\(128, 64, 3, 3\)"):
        W.check(m, bad, "f")
    missing = {k: v for k, v in sd.items() if k != "layer1.1.bn2.running_mean"}
    with pytest.raises(W.WeightsError, match="missing key 'layer1.1.bn2.running_mean'"):
        W.check(m, missing, "f")
    with pytest.raises(W.WeightsError, match=r"unexpected key 'layer1.0.bn3.bias' \(and 164 more\)"):
        W.check(m, random_state_dict("resnet50"), "f")  # ResNet-50 weights for a ResNet-18
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.read_file(tmp_path / "nope.safetensors")
    # the CLI: one error line naming the config key, the file and the key; exit 2, nothing written
    from mixjax.cli import main
    from test_dg_image_folder import PACS, make_folder

    np.savez(tmp_path / "bad.npz", **bad)
    root = make_folder(tmp_path / "data", per_class=1)
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(tmp_path / "run"),
                 "--set", "model.featurizer=resnet18", "--set", f"model.pretrained={tmp_path / 'bad.npz'}"]) == 2
    err = capsys.readouterr().err
    assert "model.pretrained" in err and "bad.npz" in err and "layer2.0.conv1.weight" in err
    assert not (tmp_path / "run").exists()
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(tmp_path / "run"),
                 "--set", "model.featurizer=mlp", "--set", f"model.pretrained={tmp_path / 'bad.npz'}"]) == 2
    assert "resnet18 or resnet50" in capsys.readouterr().err


@pytest.mark.slow
def test_pacs_sweep_with_pretrained_resnet18(tmp_path):
    """The DomainBed setting end to end on the miniature: ResNet-18 from a weights file, dropout
    drawn by the registry, augmented batches from the grain pipeline (about 1-2 CPU-minutes)."""
    import json

    from mixjax.cli import main
    from test_dg_image_folder import PACS, make_folder

    np.savez(tmp_path / "r18.npz", **random_state_dict("resnet18"))
    root = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(run), "--set", "steps=2",
                 "--set", "n_hparams=2", "--set", "n_trials=1", "--set", "algorithms=[erm]",
                 "--set", "dataset.kwargs.image_size=32", "--set", "model.featurizer=resnet18",
                 "--set", f"model.pretrained={tmp_path / 'r18.npz'}", "--set", "hparam_overrides.batch_size=4",
                 "--set", "eval_batch=48", "--no-table"]) == 0
    recs = [json.loads(line) for f in run.glob("*/results.jsonl") for line in f.read_text().splitlines()]
    assert len(recs) == 2 * 4 * 2 and all(np.isfinite(r["loss"]) for r in recs)
    assert {r["hparams"]["resnet_dropout"] for r in recs} <= {0.0, 0.1, 0.5}
    assert {r["args"]["mixjax"]["model"]["pretrained"] for r in recs} == {str(tmp_path / "r18.npz")}
