"""Data Mixing Agent (mixjax.mixing.agent, agent_policy; mixjax.search.agent_train).

The rules restated in numpy: the state features, the policy network (two tanh layers and
a softmax), the mixer's update every ``interval`` steps, the transitions' rewards and
returns, the AWR weights; the offline objective on a synthetic trajectory set where one
action is better; bad input (a missing policy file, a domain mismatch) -> exit status 2.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import cli, mixing
from mixjax.mixing import agent_policy
from mixjax.search import agent_train

DOMAINS = ("a", "b", "c")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _random_policy(tmp_path, history=2, hidden=5, seed=0, domains=DOMAINS):
    rng = np.random.default_rng(seed)
    k = len(domains)
    _, params = agent_policy.init_policy(k, history, hidden, seed)
    d = agent_policy.feature_dim(k, history)
    mean, std = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    meta = {"domains": list(domains), "history": history, "hidden": hidden, "interval": 4}
    agent_policy.save(tmp_path / "agent", params, mean, std, meta)
    arrays = {k_: np.asarray(v, np.float64) for k_, v in agent_policy.flat_arrays(params).items()}
    return tmp_path / "agent.json", arrays, mean, std


def _np_policy(arrays, mean, std, x):
    h = np.tanh(((x - mean) / std) @ arrays["l1.kernel"] + arrays["l1.bias"])
    h = np.tanh(h @ arrays["l2.kernel"] + arrays["l2.bias"])
    z = h @ arrays["out.kernel"] + arrays["out.bias"]
    e = np.exp(z - z.max())
    return e / e.sum()


def _np_features(hist, loss, prev, has_prev, progress):
    drop = (prev - loss) if has_prev else np.zeros_like(loss)
    return np.concatenate([np.ravel(hist), loss, drop, [progress]])


def test_mixer_update_is_the_numpy_rule(tmp_path):
    path, arrays, mean, std = _random_policy(tmp_path)
    mixer = mixing.build("agent", {"policy": str(path), "smoothing": 0.1}, domains=DOMAINS,
                         total_steps=16)
    assert mixer.apply_to == "loss" and mixer.every == 4
    assert mixer.wants_eval(4) and not mixer.wants_eval(3) and not mixer.wants_eval(0)
    state = mixer.init(3)
    update = jax.jit(mixer.update)          # one compilation for the three updates
    u = np.full(3, 1 / 3)
    hist = np.stack([u, u])
    l0, l1 = np.array([3.0, 2.5, 4.0]), np.array([2.7, 2.4, 3.1])

    state = update(state, {"eval_loss": jnp.asarray(l0)}, jnp.int32(0))
    w0 = 0.9 * _np_policy(arrays, mean, std, _np_features(hist, l0, l0, False, 0.0)) + 0.1 / 3
    np.testing.assert_allclose(state["weights"], w0, rtol=1e-5)
    np.testing.assert_allclose(state["hist"], np.stack([u, w0]), rtol=1e-5)

    kept = update(state, {"eval_loss": jnp.asarray(l1)}, jnp.int32(2))   # not due
    np.testing.assert_allclose(kept["weights"], w0, rtol=1e-5)
    np.testing.assert_allclose(kept["prev_loss"], l0)

    state = update(kept, {"eval_loss": jnp.asarray(l1)}, jnp.int32(4))
    x1 = _np_features(np.stack([u, w0]), l1, l0, True, 4 / 16)
    np.testing.assert_allclose(agent_policy.features(jnp.stack([u, w0]), l1, l0, True, 0.25),
                               x1, rtol=1e-6)
    w1 = 0.9 * _np_policy(arrays, mean, std, x1) + 0.1 / 3
    np.testing.assert_allclose(state["weights"], w1, rtol=1e-5)
    np.testing.assert_allclose(state["hist"], np.stack([w0, w1]), rtol=1e-5)
    assert int(state["decisions"]) == 2 and abs(float(np.sum(state["weights"])) - 1) < 1e-6


def test_transitions_rewards_and_awr_weights_are_the_numpy_rule():
    rng = np.random.default_rng(1)
    p, t, k = 2, 3, 3
    traj = rng.dirichlet(np.ones(k), size=(p, t))
    losses = rng.uniform(2.0, 4.0, size=(p, t + 1, k + 1))     # + one held-out column
    target = np.array([0.2, 0.3, 0.5, 0.0])
    tr = agent_train.transitions(traj, losses, target, history=1, num_domains=k,
                                 alive=[True, False])
    tl = losses[0] @ target
    np.testing.assert_allclose(tr.r, tl[:-1] - tl[1:])
    np.testing.assert_allclose(tr.g, tl[:-1] - tl[-1])
    np.testing.assert_allclose(tr.a, traj[0], rtol=1e-6)
    hist = [np.full(k, 1 / k), traj[0, 0], traj[0, 1]]
    for j in range(t):
        want = _np_features(hist[j], losses[0, j, :k], losses[0, max(j - 1, 0), :k], j > 0,
                            j / t)
        np.testing.assert_allclose(tr.x[j], want, rtol=1e-6)
    adv = np.array([-1.0, 0.0, 2.0, 10.0])
    s = np.std(adv)
    np.testing.assert_allclose(agent_train.awr_weights(adv, temperature=0.5, max_weight=20.0),
                               np.minimum(np.exp(adv / (0.5 * s)), 20.0))


def test_offline_objective_prefers_the_rewarded_action():
    rng = np.random.default_rng(0)
    k, n = 3, 48
    hi, lo = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.1, 0.8])
    x = rng.normal(size=(n, agent_policy.feature_dim(k, 1))).astype(np.float32)
    better = np.arange(n) % 2 == 0
    a = np.where(better[:, None], hi, lo).astype(np.float32)
    g = np.where(better, 0.05, -0.05) + rng.normal(0, 0.005, n)
    # the baseline V = mean return here (the states carry no information; train() fits a
    # ridge regression out of fold, which the slow end-to-end test exercises)
    u = agent_train.awr_weights(g - g.mean(), temperature=0.5)
    params, mean, std, loss = agent_train.fit_policy(x, a, u, history=1, hidden=8, steps=300)
    assert loss[-1] < loss[0]
    w = np.asarray(agent_policy.policy_weights(
        agent_policy.abstract_policy(k, 1, 8)[0], params, mean, std, x))
    assert w[:, 0].mean() > 0.6 and w[:, 2].mean() < 0.25, w.mean(axis=0)
    # plain behaviour cloning (every weight 1) learns the data's mean mixture instead
    assert np.all(agent_train.awr_weights(np.zeros(4)) == 1.0)


def test_bad_policy_input_names_the_key(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"mixing\.hparams\.policy: policy file .*nope"):
        mixing.build("agent", {"policy": str(tmp_path / "nope.json")}, domains=DOMAINS)
    with pytest.raises(ValueError, match=r"mixing\.hparams\.policy is not set"):
        mixing.build("agent", {}, domains=DOMAINS)
    path, *_ = _random_policy(tmp_path)
    with pytest.raises(ValueError, match=r"trained on 3 domains .* the run has 2 domains"):
        mixing.build("agent", {"policy": str(path)}, domains=("a", "b"))
    code = cli.main(["search", "agent", str(ROOT / "configs" / "search_tiny_agent.py"),
                     "--out", str(tmp_path / "o"), "--interval", "7"])
    assert code == 2 and "--interval 7 must divide" in capsys.readouterr().err


def test_interval_table_replays_one_mixture_per_interval():
    from mixjax.mixing.agent import IntervalTable
    table = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    mixer = IntervalTable(interval=2, apply_to_override="loss")
    state = mixer.init_table(table)
    np.testing.assert_allclose(state["weights"], table[0])
    for s in range(8):                      # past the table's end: its last row
        w = mixer.update(state, {}, jnp.int32(s))["weights"]
        np.testing.assert_allclose(w, table[min(s // 2, 2)], rtol=1e-6)


@pytest.mark.slow
def test_search_agent_then_train_with_the_policy(tmp_path):
    """The route end to end (4 proxies, 8 steps, 2 intervals), then a run using its policy."""
    config = str(ROOT / "configs" / "search_tiny_agent.py")
    small = ["--set", "train.steps=8", "--set", "train.eval_every=4", "--set",
             "train.ckpt_every=4", "--set", "eval.num_seqs=2", "--set", "train.progress=False"]
    out = tmp_path / "agent"
    assert cli.main(["search", "agent", config, "--out", str(out), "--interval", "4",
                     "--search-set", "proxies=4", "--fit-steps", "20", *small]) == 0
    npz = np.load(out / "trajectories.npz")
    assert npz["mixtures"].shape == (4, 2, 8) and npz["losses"].shape[:2] == (4, 3)
    assert np.all(np.isfinite(npz["losses"])) and len(npz["g"]) == 8
    pol = agent_policy.load(out / "agent.json")
    assert pol.meta["interval"] == 4 and len(pol.domains) == 8
    run = tmp_path / "run"
    assert cli.main(["train", config, *small, "--set", "mixing.name=agent", "--set",
                     f"mixing.hparams.policy={out / 'agent.json'}", "--set",
                     f"train.run_dir={run}"]) == 0
    lines = (run / "weights.jsonl").read_text().splitlines()
    assert len(lines) >= 2      # the initial weights and at least one decision


@pytest.mark.slow
def test_trajectory_swarm_trains_each_interval_on_its_mixture(tmp_path):
    """Inside the swarm's compiled step, proxy p's weights at step s are traj[p, s // I]:
    after 4 steps with I = 2 the running sum is t_0 (initial) + 2 t_0 + 2 t_1."""
    from mixjax import config as config_lib
    from mixjax.search import swarm
    from mixjax.search.agent_search import TrajectorySwarm
    cfg = config_lib.load(str(ROOT / "configs" / "search_tiny_agent.py"),
                          ["train.steps=4", "train.eval_every=2", "train.ckpt_every=4",
                           "eval.num_seqs=2", "train.progress=False"])
    traj = np.random.default_rng(0).dirichlet(np.ones(8), size=(2, 2))
    sw = TrajectorySwarm(cfg, traj, interval=2, strategy="vmap")
    res = swarm.train_swarm(sw, tmp_path / "swarm", eval_every=2)
    mix = res.state["proxy"].mix_state
    np.testing.assert_allclose(mix["weights"], traj[:, 1], rtol=1e-6)
    np.testing.assert_allclose(mix["weight_sum"], 3 * traj[:, 0] + 2 * traj[:, 1], rtol=1e-5)
    assert [s for s, _ in res.history] == [2]
