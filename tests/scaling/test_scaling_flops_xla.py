"""FLOP accounting cross-checked against XLA's own count (`jit(f).lower(...).compile().cost_analysis()`).

XLA counts a multiply-add as 2 FLOPs (as we do) and also counts elementwise HLO ops (norms,
activations, softmax, masks, residual adds: 1 per element each), which `ttc_jax.scaling.flops`
deliberately leaves out. So XLA's count must be >= ours, and above it only by the elementwise share:
- pure contractions: equal within 1%;
- blocks with norms/activations at widths >= 64: within 8%;
- the TTT inner loop with its LayerNorm forward/backward at head width F = 64: within 15% for our
  mirror of the dual form, 25% for ttc_jax.ttt (measured 1.13 and 1.18; the LN work grows like F
  per token and head, the contractions like 6F^2 + 6KF), 8% at F = 128; TTT-MLP 10-15%;
- the whole HybridLM forward (D = 128, F = 64): within 12% (measured 1.01-1.04).
XLA counts a while/scan body once whatever its trip count, so the TTT checks use one mini-batch
(T = K) and unscanned layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import ttc_jax.ttt
from ttc_jax.nn.config import ModelConfig
from ttc_jax.scaling.flops import _inner_decode_token, _inner_minibatch, decode_flops, forward_flops


def xla_flops(f, *args) -> float:
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def ones(*shape):
    return jnp.ones(shape, jnp.float32)


# --- small jnp functions mirroring the architecture (ttt-math.md) ----------------------------------------

def rms_norm(x, w, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w


def layer_norm(z, s, b, eps=1e-6):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) * jax.lax.rsqrt(var + eps) * s + b


def swiglu(x, w1, w3, w2):
    return (jax.nn.silu(x @ w1) * (x @ w3)) @ w2


def attention(x, wq, wk, wv, wo, n_heads):
    T, D = x.shape
    F = D // n_heads
    split = lambda y: y.reshape(T, n_heads, F).transpose(1, 0, 2)
    q, k, v = split(x @ wq), split(x @ wk), split(x @ wv)
    s = jnp.einsum("htf,hsf->hts", q, k) / jnp.sqrt(F)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -1e30)
    o = jnp.einsum("hts,hsf->htf", jax.nn.softmax(s, -1), v)
    return o.transpose(1, 0, 2).reshape(T, D) @ wo


def transformer_lm(tokens, emb, blocks, final_norm, n_heads):
    h = emb[tokens]
    for p in blocks:
        h = h + attention(rms_norm(h, p["n1"]), p["wq"], p["wk"], p["wv"], p["wo"], n_heads)
        h = h + swiglu(rms_norm(h, p["n2"]), p["w1"], p["w3"], p["w2"])
    return rms_norm(h, final_norm) @ emb.T


def ttt_linear_minibatch(q, k, v, eta, w1, b1, s, b, ln=layer_norm):
    """Dual form of ttt-math.md §4 for one head and one mini-batch."""
    Z = k @ w1 + b1
    out, vjp = jax.vjp(lambda z: ln(z, s, b), Z)
    G = vjp(out - (v - k))[0]
    E = jnp.tril(eta)
    A = jnp.tril(q @ k.T)
    Zb = q @ w1 - (E * A) @ G + (b1 - E @ G)
    z = q + ln(Zb, s, b)
    return z, w1 - (eta[-1][:, None] * k).T @ G, b1 - eta[-1][None] @ G


def ttt_mlp_minibatch(q, k, v, eta, w1, b1, w2, b2, s, b, ln=layer_norm):
    g = lambda x: jax.nn.gelu(x, approximate=True)
    Z1 = k @ w1 + b1
    X2 = g(Z1)
    out, vjp = jax.vjp(lambda z: ln(z, s, b), X2 @ w2 + b2)
    G2 = vjp(out - (v - k))[0]
    G1 = jax.vjp(g, Z1)[1](G2 @ w2.T)[0]
    E = jnp.tril(eta)
    Z1b = q @ w1 - (E * jnp.tril(q @ k.T)) @ G1 + (b1 - E @ G1)
    X2b = g(Z1b)
    Z2b = X2b @ w2 - (E * jnp.tril(X2b @ X2.T)) @ G2 + (b2 - E @ G2)
    z = q + ln(Z2b, s, b)
    e = eta[-1][:, None]
    return (z, w1 - (e * k).T @ G1, b1 - eta[-1][None] @ G1, w2 - (e * X2).T @ G2, b2 - eta[-1][None] @ G2)


def ttt_linear_decode(q, k, v, lr, s_i, w0, b0, gw, gb, s, b):
    """One token: gradient at the mini-batch start W0, accumulate, output through W0 - s_i * accumulated."""
    z = k @ w0 + b0
    out, vjp = jax.vjp(lambda u: layer_norm(u, s, b), z)
    G = vjp(out - (v - k))[0]
    gw = gw + lr * k.T @ G
    gb = gb + lr * G
    zq = q @ w0 - s_i * (q @ gw) + b0 - s_i * gb
    return q + layer_norm(zq, s, b), gw, gb


def identity_ln(z, s, b):
    return z


# --- checks ----------------------------------------------------------------------------------------------

def test_matmul_is_exact():
    assert xla_flops(lambda a, b: a @ b, ones(16, 64), ones(64, 96)) == 2 * 16 * 64 * 96


def test_swiglu_ffn():
    T, D, Fh = 32, 128, 256
    ours = forward_flops(ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=2, ffn_dim=Fh,
                                     layer_pattern=("attention",), backbone="transformer"), T).ffn
    assert ours == 6 * T * D * Fh
    xla = xla_flops(swiglu, ones(T, D), ones(D, Fh), ones(D, Fh), ones(Fh, D))
    assert 1.0 <= xla / ours <= 1.02, xla / ours


def test_attention_layer_dense_context():
    T, D, H = 64, 128, 2
    cfg = ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=H, ffn_dim=8,
                      layer_pattern=("attention",), backbone="transformer")
    f = forward_flops(cfg, T, causal_skip=False)
    ours = f.dense + f.attention
    assert f.attention == 4 * D * T * T
    xla = xla_flops(lambda x, *w: attention(x, *w, H), ones(T, D), *(ones(D, D) for _ in range(4)))
    assert 1.0 <= xla / ours <= 1.05, xla / ours


def test_transformer_lm_forward():
    V, T, D, H, Fh, L = 512, 64, 128, 2, 256, 2
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=H, ffn_dim=Fh,
                      layer_pattern=("attention",), backbone="transformer")
    blocks = [dict(n1=ones(D), n2=ones(D), wq=ones(D, D), wk=ones(D, D), wv=ones(D, D), wo=ones(D, D),
                   w1=ones(D, Fh), w3=ones(D, Fh), w2=ones(Fh, D)) for _ in range(L)]
    xla = xla_flops(lambda t, e, bl, n: transformer_lm(t, e, bl, n, H), jnp.zeros(T, jnp.int32),
                    ones(V, D), blocks, ones(D))
    ours = forward_flops(cfg, T, causal_skip=False).total
    assert 1.0 <= xla / ours <= 1.08, xla / ours


def test_attention_decode_step_with_cache():
    P, D, H = 40, 128, 2
    cfg = ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=H, ffn_dim=8,
                      layer_pattern=("attention",), backbone="transformer")

    def step(x, kc, vc, wq, wk, wv, wo):  # one new token; cache holds the P earlier keys/values
        F = D // H
        q = (x @ wq).reshape(H, 1, F)
        k = jnp.concatenate([kc, (x @ wk).reshape(1, H, F).transpose(1, 0, 2)], 1)
        v = jnp.concatenate([vc, (x @ wv).reshape(1, H, F).transpose(1, 0, 2)], 1)
        p = jax.nn.softmax(jnp.einsum("hqf,hkf->hqk", q, k) / jnp.sqrt(F), -1)
        return jnp.einsum("hqk,hkf->hqf", p, v).reshape(1, D) @ wo

    f = decode_flops(cfg, 1, start=P)
    ours = f.dense + f.attention
    assert f.attention == 4 * D * (P + 1)
    xla = xla_flops(step, ones(1, D), ones(H, P, D // H), ones(H, P, D // H), *(ones(D, D) for _ in range(4)))
    assert 1.0 <= xla / ours <= 1.05, xla / ours


@pytest.mark.parametrize("F,hi", [(64, 1.15), (128, 1.08)])
def test_ttt_linear_dual_form_minibatch(F, hi):
    H, K = 2, 16
    args = (ones(H, K, F), ones(H, K, F), ones(H, K, F), ones(H, K, K), ones(H, F, F), ones(H, 1, F),
            ones(H, F), ones(H, F))
    ours = _inner_minibatch("ttt_linear", H, F, K)
    contractions = xla_flops(jax.vmap(lambda *a: ttt_linear_minibatch(*a, ln=identity_ln)), *args)
    assert 1.0 <= contractions / ours <= 1.03, contractions / ours
    xla = xla_flops(jax.vmap(ttt_linear_minibatch), *args)
    assert 1.0 <= xla / ours <= hi, xla / ours


@pytest.mark.parametrize("F,hi", [(64, 1.10), (128, 1.06)])
def test_ttt_mlp_dual_form_minibatch(F, hi):
    H, K = 2, 16
    args = (ones(H, K, F), ones(H, K, F), ones(H, K, F), ones(H, K, K), ones(H, F, 4 * F), ones(H, 1, 4 * F),
            ones(H, 4 * F, F), ones(H, 1, F), ones(H, F), ones(H, F))
    ours = _inner_minibatch("ttt_mlp", H, F, K)
    xla = xla_flops(jax.vmap(ttt_mlp_minibatch), *args)
    assert 1.0 <= xla / ours <= hi, xla / ours


def test_ttt_linear_decode_token():
    H, F = 2, 64
    ours = _inner_decode_token("ttt_linear", H, F)
    xla = xla_flops(jax.vmap(ttt_linear_decode, in_axes=(0, 0, 0, None, None, 0, 0, 0, 0, 0, 0)),
                    ones(H, 1, F), ones(H, 1, F), ones(H, 1, F), 0.1, 0.5, ones(H, F, F), ones(H, 1, F),
                    ones(H, F, F), ones(H, 1, F), ones(H, F), ones(H, F))
    assert 1.0 <= xla / ours <= 1.15, xla / ours


# --- the project's own implementations -------------------------------------------------------------------


# measured with the first ttc_jax.ttt (dual form with an explicit LayerNorm backward): 1.18 and 1.10
@pytest.mark.parametrize("kind,F,hi", [("ttt_linear", 64, 1.25), ("ttt_mlp", 64, 1.15)])
def test_ttc_jax_ttt_inner_loop(kind, F, hi):
    fn = getattr(ttc_jax.ttt, kind)
    B, H, K = 1, 2, 16
    Fm = F if kind == "ttt_linear" else 4 * F
    weights = {"w1": ones(H, F, Fm), "b1": ones(H, 1, Fm)}
    if kind == "ttt_mlp":
        weights.update(w2=ones(H, Fm, F), b2=ones(H, 1, F))
    q = k = v = ones(B, H, K, F) * 0.1

    def run(q, k, v, lr, ts, w, s, b):  # return the state too, else XLA drops the weight update as dead code
        return fn(q, k, v, lr, ts, w, s, b, mini_batch_size=K, impl="xla")

    xla = xla_flops(run, q, k, v, ones(B, H, K) * 0.01, ones(K), weights, ones(H, F), ones(H, F) * 0)
    ours = B * _inner_minibatch(kind, H, F, K)
    assert 1.0 <= xla / ours <= hi, xla / ours


@pytest.mark.parametrize("pattern,backbone", [(("attention",), "transformer"), (("ttt_linear",), "transformer"),
                                              (("ttt_linear", "ttt_mlp"), "mamba")])
def test_hybrid_lm_forward(pattern, backbone):
    from flax import nnx
    from ttc_jax.nn import HybridLM

    T = 16  # one TTT mini-batch: XLA counts a scan body once
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=2, ffn_dim=256, layer_pattern=pattern,
                      backbone=backbone, mini_batch_size=T, max_seq_len=64, scan_layers=False, remat_group=0)
    model = HybridLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def fwd(state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    xla = xla_flops(fwd, state, jnp.zeros((1, T), jnp.int32))
    # logits only: the final TTT state is discarded; the attention implementation masks a dense score matrix
    ours = forward_flops(cfg, T, causal_skip=False, keep_state=False).total
    assert 1.0 <= xla / ours <= 1.12, (xla, ours, xla / ours)  # measured 1.010, 1.030, 1.041
