"""Reward-model head: hidden states from HybridLM, vmapped scoring == per-candidate loop, BCE learning,
checkpoint round trip, mismatch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn.config import get_config
from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel, aggregate, score_candidates, step_mask
from ttc_jax.search import checkpoint
from ttc_jax.search.training import reward_batch, train_reward

CFG = get_config("tiny-transformer", d_model=32, ffn_dim=64, n_layers=2, max_seq_len=64)
SEP = ord("\n")


@pytest.fixture(scope="module")
def rm():
    return RewardModel(CFG, separator=SEP, rngs=nnx.Rngs(0))


def test_return_hidden_is_the_lm_head_input():
    model = HybridLM(CFG, rngs=nnx.Rngs(1))
    x = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    logits, h = nnx.jit(lambda m, t: m(t, return_hidden=True))(model, x)
    assert h.shape == (2, 12, model.cfg.d_model) and h.dtype == jnp.float32
    np.testing.assert_allclose(model.embed.attend(h), logits, atol=1e-6)
    np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, x), logits, atol=1e-6)


def test_vmapped_scoring_equals_loop(rm):
    x = jax.random.randint(jax.random.key(2), (3, 5, 10), 0, 256)
    got = score_candidates(rm, x)
    one = nnx.jit(lambda m, t: m(t))
    want = jnp.stack([one(rm, x[:, j]) for j in range(5)], 1)
    assert got.shape == (3, 5, 10)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert float(got.min()) > 0 and float(got.max()) < 1


def test_step_mask_skips_the_prompt():
    t = jnp.array([[SEP, 5, SEP, 7, SEP, 0]])
    np.testing.assert_array_equal(step_mask(t, jnp.array([1]), SEP), [[0, 0, 1, 0, 1, 0]])


def test_prm_learns_a_toy_step_labelled_set():
    """Steps are 'a' or 'b'; a step is good while every step so far is 'a' (needs to look back)."""
    rng = np.random.default_rng(0)

    def examples(n):
        out = []
        for _ in range(n):
            steps = [str(rng.choice(["a", "b"], p=[0.75, 0.25])) for _ in range(int(rng.integers(1, 5)))]
            labels = list(np.cumprod([s == "a" for s in steps]).astype(float))
            out.append(("Q\n", steps, labels, True))
        return out

    train, test = examples(512), examples(64)
    model = RewardModel(CFG, separator=SEP, rngs=nnx.Rngs(3))
    batches = lambda i: reward_batch([train[j] for j in rng.integers(0, len(train), 32)], 16, sep=SEP, eos=0,
                                     pad=1, kind="prm", rng=rng, max_left_pad=4)
    hist = train_reward(model, batches, steps=150, lr=3e-3, log=lambda m: None)
    toks, labels, weights = reward_batch(test, 16, sep=SEP, eos=0, pad=1, kind="prm")
    pred = np.asarray(model(jnp.asarray(toks)))
    w = weights > 0
    acc = ((pred[w] > 0.5) == (labels[w] > 0.5)).mean()
    assert hist[-1][1] < 0.5 * hist[0][1] and acc > 0.95, (hist, acc)
    # per-candidate aggregation: min over steps separates all-'a' candidates from the rest
    agg = np.asarray(aggregate(jnp.asarray(pred), jnp.asarray(w), "min"))
    good = np.array([all(lab) for _, _, lab, _ in test])
    assert (agg[good] > 0.5).all() and (agg[~good] < 0.5).all()


def test_checkpoint_roundtrip_and_mismatch(rm, tmp_path):
    path = str(tmp_path / "prm")
    checkpoint.save(path, rm, {"separator": SEP, "kind": "prm"})
    back = checkpoint.load_reward(path)
    x = jax.random.randint(jax.random.key(4), (2, 9), 0, 256)
    np.testing.assert_array_equal(back(x), rm(x))
    with pytest.raises(ValueError, match="not a reward model"):
        checkpoint.save(path + "x", rm) or checkpoint.load_reward(path + "x")
    with pytest.raises(ValueError, match="vocab_size=256 does not match the policy's vocab_size=512"):
        rm.check_policy(CFG.replace(vocab_size=512), SEP)
    with pytest.raises(ValueError, match="separator=10 does not match the task's separator=59"):
        rm.check_policy(CFG, ord(";"))
    with pytest.raises(ValueError, match="kind='value'"):
        RewardModel(CFG, separator=SEP, kind="value", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="separator=300"):
        RewardModel(CFG, separator=300, rngs=nnx.Rngs(0))


def test_reward_pretrained_folder_roundtrip(rm, tmp_path):
    trained = nnx.clone(rm)
    trained.head.kernel.value = jax.random.normal(jax.random.key(5), rm.head.kernel.value.shape)  # not the init
    trained.head.bias.value = jnp.asarray([0.3])
    path = tmp_path / "arith-prm"
    checkpoint.save_reward_pretrained(trained, str(path), metadata={"note": "test"})
    x = jax.random.randint(jax.random.key(6), (2, 9), 0, 256)
    fwd = nnx.jit(lambda m, t: m(t))
    want = fwd(trained, x)
    for back in (checkpoint.load_reward_pretrained(str(path)), checkpoint.load_reward(str(path))):
        assert back.kind == "prm" and back.separator == SEP
        np.testing.assert_array_equal(fwd(back, x), want)
    # the folder is also a plain LM checkpoint of the backbone (`ttc best-of-n --policy` takes folders too)
    lm = checkpoint.load_policy(str(path))
    np.testing.assert_array_equal(fwd(lm, x), fwd(trained.backbone, x))
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save_reward_pretrained(trained, str(path))
    (path / checkpoint.HEAD_FILE).unlink()
    with pytest.raises(ValueError, match="is not a reward model"):
        checkpoint.load_reward_pretrained(str(path))
