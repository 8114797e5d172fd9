"""Tests for the NNX building blocks: RoPE, CausalConv, SwiGLU, Attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn.attention import Attention, KVCache, attend, attention_mask, blocked_causal_attention, init_kv_cache
from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.conv import CausalConv
from ttc_jax.nn.mlp import SwiGLU
from ttc_jax.nn.rope import apply_rope, rope_frequencies

B, T, D, H = 2, 12, 32, 4
F = D // H


def rand(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# --- RoPE --------------------------------------------------------------------

def rope_reference(x, positions, theta=1e4):
    x = np.asarray(x, np.float64)
    f = x.shape[-1]
    z = x[..., 0::2] + 1j * x[..., 1::2]
    freqs = theta ** (-np.arange(0, f, 2) / f)
    pos = np.asarray(positions, np.float64)
    rot = np.exp(1j * pos[..., None] * freqs)  # [(B,) T, F/2]
    out = z * rot[..., None, :]
    res = np.empty_like(x)
    res[..., 0::2], res[..., 1::2] = out.real, out.imag
    return res


def test_rope_matches_complex_reference_and_preserves_norm():
    x = rand(0, (B, T, H, F))
    pos1 = jnp.arange(T) + 5
    pos2 = jnp.stack([jnp.arange(T), jnp.arange(T) * 3 + 1])
    for pos in (pos1, pos2):
        y = apply_rope(x, pos)
        np.testing.assert_allclose(y, rope_reference(x, pos), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(rope_frequencies(F), 1e4 ** (-np.arange(0, F, 2) / F), rtol=1e-6)
    assert apply_rope(x.astype(jnp.bfloat16), pos1).dtype == jnp.bfloat16


def test_rope_relative_position():
    q = rand(1, (1, 1, H, F))
    k = rand(2, (1, 1, H, F))

    def dot(pq, pk):
        return jnp.sum(apply_rope(q, jnp.array([pq])) * apply_rope(k, jnp.array([pk])), -1)

    np.testing.assert_allclose(dot(7, 3), dot(104, 100), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dot(0, 0), jnp.sum(q * k, -1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(dot(7, 3), dot(7, 5))


def test_rope_errors():
    with pytest.raises(ValueError, match="rank 4"):
        apply_rope(rand(0, (T, H, F)), jnp.arange(T))
    with pytest.raises(ValueError, match="even"):
        apply_rope(rand(0, (B, T, H, 7)), jnp.arange(T))
    with pytest.raises(ValueError, match="positions"):
        apply_rope(rand(0, (B, T, H, F)), jnp.arange(T + 1))


# --- CausalConv ----------------------------------------------------------------

def conv_reference(kernel, bias, x):
    kernel, bias, x = (np.asarray(a, np.float64) for a in (kernel, bias, x))
    width = kernel.shape[0]
    y = np.zeros_like(x) + bias
    for t in range(x.shape[1]):
        for w in range(width):
            src = t - (width - 1) + w
            if src >= 0:
                y[:, t] += kernel[w] * x[:, src]
    return y


@pytest.fixture(scope="module")
def conv():
    c = CausalConv(D, 4, rngs=nnx.Rngs(0))
    c.bias[...] = rand(9, (D,))  # non-zero bias to test it
    return c


def test_conv_matches_loop(conv):
    assert conv.kernel.shape == (4, D) and conv.bias.shape == (D,)
    x = rand(3, (B, T, D))
    y, window = conv(x)
    np.testing.assert_allclose(y, conv_reference(conv.kernel[...], conv.bias[...], x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(window, x[:, -3:])
    assert window.shape == conv.init_window(B).shape


def test_conv_split_and_token_by_token(conv):
    x = rand(4, (B, T, D))
    y_full, w_full = conv(x)
    for cut in (1, 2, 7):  # includes chunks shorter than width-1
        y1, w = conv(x[:, :cut])
        y2, w = conv(x[:, cut:], w)
        np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y_full, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(w, w_full)
    step = jax.jit(lambda xt, w: conv(xt, w))
    w, ys = conv.init_window(B), []
    for t in range(T):
        yt, w = step(x[:, t:t + 1], w)
        ys.append(yt)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), y_full, rtol=1e-5, atol=1e-6)


def test_conv_errors(conv):
    with pytest.raises(ValueError, match="x must have shape"):
        conv(rand(0, (B, T, D + 1)))
    with pytest.raises(ValueError, match="window must have shape"):
        conv(rand(0, (B, T, D)), jnp.ones((B, 2, D)))


# --- SwiGLU --------------------------------------------------------------------

def test_swiglu_formula():
    m = SwiGLU(D, 48, rngs=nnx.Rngs(1))
    assert m.w1.kernel.shape == (D, 48) and m.w3.kernel.shape == (D, 48) and m.w2.kernel.shape == (48, D)
    assert m.w1.bias is None
    x = rand(5, (B, T, D))
    ref = (jax.nn.silu(x @ m.w1.kernel[...]) * (x @ m.w3.kernel[...])) @ m.w2.kernel[...]
    y = m(x)
    assert y.shape == (B, T, D)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)


# --- Attention -----------------------------------------------------------------

def make_cfg(**kw):
    return ModelConfig(vocab_size=64, d_model=D, n_layers=1, n_heads=H, ffn_dim=64,
                       layer_pattern=("attention",), backbone="transformer", init_std=0.2, **kw)


def attention_reference(attn, x, pos0=0, window=None):
    """Naive per-query softmax in float64."""
    Bx, Tx, _ = x.shape
    pos = np.arange(Tx) + pos0
    proj = lambda lin: np.asarray(x, np.float64) @ np.asarray(lin.kernel[...], np.float64)
    q = rope_reference(proj(attn.wq).reshape(Bx, Tx, H, F), pos)
    k = rope_reference(proj(attn.wk).reshape(Bx, Tx, H, F), pos)
    v = proj(attn.wv).reshape(Bx, Tx, H, F)
    out = np.zeros_like(q)
    for b in range(Bx):
        for h in range(H):
            for i in range(Tx):
                js = [j for j in range(i + 1) if window is None or i - j < window]
                s = np.array([q[b, i, h] @ k[b, j, h] for j in js]) / np.sqrt(F)
                p = np.exp(s - s.max())
                p /= p.sum()
                out[b, i, h] = sum(pj * v[b, j, h] for pj, j in zip(p, js))
    return out.reshape(Bx, Tx, D) @ np.asarray(attn.wo.kernel[...], np.float64)


@pytest.mark.parametrize("window,block", [(None, 0), (5, 0), (None, 5), (5, 4)])
def test_attention_full_pass_vs_reference(window, block):
    attn = Attention(make_cfg(sliding_window=window, attn_block_size=block), rngs=nnx.Rngs(2))
    x = rand(6, (B, T, D))
    y, cache = attn(x, pos=3)
    assert cache is None and y.shape == (B, T, D)
    np.testing.assert_allclose(y, attention_reference(attn, x, 3, window), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_attention_decode_matches_full(window):
    attn = Attention(make_cfg(sliding_window=window), rngs=nnx.Rngs(3))
    x = rand(7, (B, T, D))
    y_full, _ = attn(x)
    graphdef, state = nnx.split(attn)

    @jax.jit
    def step(state, xt, cache, pos):
        return nnx.merge(graphdef, state)(xt, cache=cache, pos=pos)

    cache, ys = init_kv_cache(B, T + 4, H, F), []
    for t in range(T):
        yt, cache = step(state, x[:, t:t + 1], cache, jnp.int32(t))
        ys.append(yt)
    assert isinstance(cache, KVCache) and cache.k.shape == (B, T + 4, H, F)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), y_full, rtol=1e-5, atol=1e-6)

    # prefill a prompt, then decode the rest with the same jitted step
    prompt = 5
    cache = init_kv_cache(B, T + 4, H, F)
    y_pre, cache = attn(x[:, :prompt], cache=cache, pos=0)
    ys = [y_pre]
    for t in range(prompt, T):
        yt, cache = step(state, x[:, t:t + 1], cache, jnp.int32(t))
        ys.append(yt)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), y_full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [None, 3, 7])
def test_blocked_attention_equals_dense_values_and_gradients(window):
    """Query blocks over only the visible keys == one dense masked T x T softmax (T not a multiple)."""
    q, k, v, g = (rand(20 + i, (B, 11, H, F)) for i in range(4))
    pos = jnp.arange(11, dtype=jnp.int32) + 2
    dense = lambda q, k, v: attend(q, k, v, attention_mask(pos, pos, window))
    blocked = lambda q, k, v: blocked_causal_attention(q, k, v, pos, window, 4)
    np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), rtol=1e-6, atol=1e-6)
    grads = [jax.vjp(f, q, k, v)[1](g) for f in (blocked, dense)]
    for gb, gd in zip(*grads):
        np.testing.assert_allclose(gb, gd, rtol=1e-5, atol=1e-6)


def test_attention_bfloat16_activations():
    attn = Attention(make_cfg(dtype="bfloat16"), rngs=nnx.Rngs(4))
    assert attn.wq.kernel.dtype == jnp.float32
    x = rand(8, (B, T, D))
    y, _ = attn(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), attention_reference(attn, x), rtol=0.1, atol=0.05)


def test_attention_errors():
    attn = Attention(make_cfg(), rngs=nnx.Rngs(5))
    with pytest.raises(ValueError, match="x must have shape"):
        attn(rand(0, (T, D)))
    with pytest.raises(ValueError, match="x must have shape"):
        attn(rand(0, (B, T, D + 2)))
    with pytest.raises(ValueError, match="outside the KV cache"):
        attn(rand(0, (B, 4, D)), cache=init_kv_cache(B, 8, H, F), pos=6)
    with pytest.raises(ValueError, match="cache.k must have shape"):
        attn(rand(0, (B, 4, D)), cache=init_kv_cache(B, 8, H + 1, F), pos=0)


def test_conv_matches_published_linen_conv(conv):
    """Same numbers as ttt-lm-jax's nn.Conv(kernel (4, 1, C), padding="CAUSAL", groups=C)."""
    import flax.linen as nn

    x = rand(10, (B, T, D))
    lin = nn.Conv(D, kernel_size=(4,), feature_group_count=D, padding="CAUSAL")
    params = {"params": {"kernel": conv.kernel[...][:, None, :], "bias": conv.bias[...]}}
    np.testing.assert_allclose(conv(x)[0], lin.apply(params, x), rtol=1e-5, atol=1e-6)
