"""Ragged prompts, per-row decoding state, N samples per prompt: against full forward passes and single calls.

One small hybrid model (a TTT-Linear block with the Mamba-style convolutions and an attention block;
mini-batch 4, so prompts cross mini-batch ends) shared by the module; shapes and cache sizes are reused so
that each compiled function compiles once. TTT-MLP keeps a state of the same form (tested in tests/nn).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.generate import (continue_from, feed, generate, prefill_prompts, repeat_rows, sample, sample_keys,
                              select_rows)
from ttc_jax.nn import HybridLM, get_config

CFG = get_config("tiny-hybrid", vocab_size=64, d_model=32, n_heads=2, ffn_dim=64, mini_batch_size=4,
                 n_layers=2, layer_pattern=("ttt_linear", "attention"))
LENGTHS = (3, 9, 6)
NEW = 6
CACHE = 24


@pytest.fixture(scope="module")
def model():
    return HybridLM(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(0, CFG.vocab_size, n).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def forward(model):
    fwd = nnx.jit(lambda m, t: m(t))
    return lambda seqs: _full_pass(fwd, model, seqs)


def _full_pass(fwd, model, seqs):
    """Log-softmax [B, CACHE, V] of one full pass over right-padded sequences (causal: pads do not matter)."""
    tokens = np.zeros((len(seqs), CACHE), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    return np.asarray(jax.nn.log_softmax(fwd(model, jnp.asarray(tokens)), axis=-1))


def _check_against_full_pass(forward, prompts, tokens, lengths, logprobs=None, greedy=True):
    """Each row's new tokens are greedy (argmax) under one full pass and its logprobs are that pass's."""
    seqs = [list(p) + list(np.asarray(t)[:n]) for p, t, n in zip(prompts, tokens, lengths)]
    lsm = forward(seqs)
    for r, (p, n) in enumerate(zip(prompts, lengths)):
        at = lsm[r, len(p) - 1: len(p) - 1 + n]  # distributions that produced the new tokens
        chosen = np.asarray(tokens[r])[:n]
        if greedy:
            np.testing.assert_array_equal(chosen, at.argmax(-1), err_msg=f"row {r}")
        if logprobs is not None:
            np.testing.assert_allclose(np.asarray(logprobs[r])[:n], at[np.arange(n), chosen], atol=2e-5,
                                       err_msg=f"row {r}")



def test_ragged_greedy_generation_equals_full_passes_and_logprobs_match(model, prompts, forward):
    toks, lps = generate(model, prompts, NEW, rng=jax.random.key(0), temperature=0.0, return_logprobs=True,
                         cache_size=CACHE)
    assert toks.shape == (3, NEW) and toks.dtype == jnp.int32 and lps.dtype == jnp.float32
    _check_against_full_pass(forward, prompts, toks, [NEW] * 3, lps)
    # the same rows given as a right-padded array plus lengths
    arr = np.full((3, max(LENGTHS)), 7, np.int32)
    for i, p in enumerate(prompts):
        arr[i, :len(p)] = p
    again = generate(model, arr, NEW, rng=jax.random.key(1), temperature=0.0, prompt_lengths=LENGTHS,
                     cache_size=CACHE)
    np.testing.assert_array_equal(again, toks)


def test_ragged_sampling_equals_each_prompt_alone(model, prompts, forward):
    keys = jax.random.split(jax.random.key(2), 3)
    kw = dict(temperature=1.0, top_k=20, cache_size=CACHE, return_logprobs=True)
    toks, lps = generate(model, prompts, NEW, rng=keys, **kw)
    _check_against_full_pass(forward, prompts, toks, [NEW] * 3, lps, greedy=False)
    for r, p in enumerate(prompts):
        alone, _ = generate(model, [p], NEW, rng=keys[r:r + 1], **kw)
        np.testing.assert_array_equal(alone[0], toks[r], err_msg=f"prompt {r}")
    # seeded: the same key reproduces, another key differs
    np.testing.assert_array_equal(generate(model, prompts, NEW, rng=keys, **kw)[0], toks)
    assert (np.asarray(generate(model, prompts, NEW, rng=jax.random.split(jax.random.key(3), 3), **kw)[0])
            != np.asarray(toks)).any()


def test_stop_tokens_end_rows_and_pad_the_rest(model, prompts):
    free = np.asarray(generate(model, prompts, NEW, rng=jax.random.key(0), temperature=0.0, cache_size=CACHE))
    stop = int(free[0, 2])
    state = prefill_prompts(model, prompts, cache_size=CACHE)
    out, _ = continue_from(model, state, NEW, rng=jax.random.key(0), temperature=0.0, stop_tokens=(stop,),
                           pad_id=63)
    for r in range(3):
        hits = np.flatnonzero(free[r] == stop)
        n = int(hits[0]) + 1 if hits.size else NEW
        assert int(out.lengths[r]) == n and bool(out.finished[r]) == bool(hits.size)
        np.testing.assert_array_equal(np.asarray(out.tokens[r, :n]), free[r, :n])
        assert (np.asarray(out.tokens[r, n:]) == 63).all() and (np.asarray(out.logprobs[r, n:]) == 0).all()


def test_step_wise_continuation_with_selected_rows_equals_full_passes(model, prompts, forward):
    """Two reasoning 'steps' ending at a stop token, rows duplicated/reordered in between, then tokens fed."""
    state = prefill_prompts(model, prompts, cache_size=CACHE)
    free = np.asarray(generate(model, prompts, NEW, rng=jax.random.key(0), temperature=0.0, cache_size=CACHE))
    stop = int(free[1, 1])  # row 1 stops after 2 tokens, the others when (if) they meet it
    first, state = continue_from(model, state, 3, rng=jax.random.key(0), temperature=0.0, stop_tokens=(stop,))
    assert len(set(np.asarray(state.pos).tolist())) > 1  # rows now at different positions
    idx = np.array([1, 0, 1, 2])
    state = select_rows(state, idx)
    state = feed(model, state, jnp.asarray([[5, 6], [7, 8], [9, 10], [11, 12]]), lengths=[2, 1, 0, 2])
    keys = jax.random.split(jax.random.key(4), 4)
    second, state = continue_from(model, state, 3, rng=keys, temperature=0.7, min_p=0.05)
    fed = [[5, 6], [7], [], [11, 12]]
    seqs = [list(prompts[i]) + np.asarray(first.tokens[i])[:int(first.lengths[i])].tolist() + fed[j]
            for j, i in enumerate(idx)]
    assert np.asarray(state.pos).tolist() == [len(s) + int(n) for s, n in zip(seqs, second.lengths)]
    _check_against_full_pass(forward, seqs, second.tokens, np.asarray(second.lengths), second.logprobs,
                             greedy=False)
    _check_against_full_pass(forward, prompts, first.tokens, np.asarray(first.lengths), first.logprobs)


@pytest.mark.parametrize("ragged", [pytest.param(False, marks=pytest.mark.slow), True], ids=["same-length", "ragged"])
def test_vmap_batch_and_single_sample_calls_give_the_same_candidates(model, prompts, forward, ragged):
    P, N = 2, 3
    ps = [prompts[1], prompts[2]] if ragged else [prompts[1][:6], prompts[2]]
    state = prefill_prompts(model, ps, cache_size=CACHE)
    keys = sample_keys(jax.random.key(7), P, N)
    kw = dict(n=N, max_new_tokens=NEW, rng=keys, temperature=1.0, top_p=0.9, cache=state)
    by_vmap = sample(model, mode="vmap", **kw)
    by_batch = sample(model, mode="batch", **kw)
    assert by_vmap.tokens.shape == (P, N, NEW) and by_vmap.lengths.shape == (P, N)
    for a, b in zip(jax.tree.leaves(by_vmap), jax.tree.leaves(by_batch)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # the same candidates from continue_from on the repeated rows, and from single-sample calls
    rows, _ = continue_from(model, repeat_rows(state, N), NEW, rng=keys.reshape(-1), top_p=0.9)
    np.testing.assert_array_equal(np.asarray(rows.tokens).reshape(P, N, NEW), by_batch.tokens)
    for p in range(P):
        one = prefill_prompts(model, [ps[p]], cache_size=CACHE)
        for i in range(N):
            single = sample(model, n=1, max_new_tokens=NEW, rng=keys[p, i].reshape(1, 1), top_p=0.9, cache=one)
            np.testing.assert_array_equal(single.tokens[0, 0], by_batch.tokens[p, i])
    flat = np.asarray(by_batch.tokens).reshape(P * N, NEW)
    _check_against_full_pass(forward, [ps[p] for p in range(P) for _ in range(N)], flat, [NEW] * P * N,
                             np.asarray(by_batch.logprobs).reshape(P * N, NEW), greedy=False)
    assert len({tuple(t) for t in flat}) > P  # the N samples of a prompt differ


def test_temperature_zero_samples_are_the_greedy_continuation(model, prompts):
    greedy = generate(model, prompts, NEW, rng=jax.random.key(0), temperature=0.0, cache_size=CACHE)
    state = prefill_prompts(model, prompts, cache_size=CACHE)
    out = sample(model, n=2, max_new_tokens=NEW, rng=jax.random.key(9), temperature=0.0, cache=state)
    np.testing.assert_array_equal(out.tokens, np.broadcast_to(np.asarray(greedy)[:, None], (3, 2, NEW)))


def test_bad_input(model, prompts):
    key = jax.random.key(0)
    cases = [
        (lambda: generate(model, [[1, 2], []], 3, rng=key), r"prompts\[1\] has shape \(0,\)"),
        (lambda: generate(model, np.zeros((2, 0), np.int32), 3, rng=key), "prompts has T=0"),
        (lambda: generate(model, np.ones((2, 4), np.int32), 3, rng=key, prompt_lengths=[4, 0]),
         r"prompt_lengths\[1\]=0"),
        (lambda: generate(model, [[1, 99]], 3, rng=key), "id 99 outside the vocabulary"),
        (lambda: generate(model, [[1, 2]], 0, rng=key), "max_new_tokens=0"),
        (lambda: generate(model, [[1, 2]], 2.0, rng=key), "max_new_tokens=2.0"),
        (lambda: generate(model, [[1, 2]], "3", rng=key), "max_new_tokens='3'"),
        (lambda: generate(model, [[1, 2]], 3, rng=key, cache_size=4), "cache_size=4 is smaller"),
        (lambda: generate(model, [[1, 2]], 3, rng=key, stop_tokens=(64,)), "stop_tokens contains 64"),
        (lambda: sample(model, prompts, n=0, max_new_tokens=3, rng=key), "n=0; expected an int >= 1"),
        (lambda: sample(model, prompts, n=2, max_new_tokens=3, rng=key, temperature=-1), "temperature=-1"),
        (lambda: sample(model, prompts, n=2, max_new_tokens=3, rng=key, top_p=0), "top_p=0"),
        (lambda: sample(model, prompts, n=2, max_new_tokens=3, rng=key, top_p=1.01), "top_p=1.01"),
        (lambda: sample(model, prompts, n=2, max_new_tokens=3, rng=key, mode="loop"), "mode='loop'"),
        (lambda: sample(model, None, n=2, max_new_tokens=3, rng=key), "prompts=None"),
        (lambda: sample(model, prompts, n=2, max_new_tokens=3, rng=jax.random.split(key, 3)),
         r"rng has shape \(3,\); expected one key or keys of shape \(3, 2\)"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    state = prefill_prompts(model, prompts, cache_size=12)  # the longest prompt has 9 tokens
    with pytest.raises(ValueError, match=r"9 tokens consumed \+ 4 new = 13 positions, more than the cache holds"):
        sample(model, n=2, max_new_tokens=4, rng=key, cache=state)
    with pytest.raises(ValueError, match="more than the cache holds"):
        continue_from(model, state, 4, rng=key)
    with pytest.raises(ValueError, match="cache_size=5 is smaller than the longest prompt"):
        prefill_prompts(model, prompts, cache_size=5)
    # NumPy integers are accepted where ints are expected
    out = generate(model, [prompts[0]], np.int64(NEW), rng=key[None], top_k=np.int32(20), cache_size=CACHE)
    assert out.shape == (1, NEW)
