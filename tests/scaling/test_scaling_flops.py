"""Parameter and FLOP accounting: published parameter counts, hand-computed formulas, invariants."""

from __future__ import annotations

import pytest

from ttc_jax.nn.config import ModelConfig, get_config
from ttc_jax.scaling.flops import (AffineCost, best_of_n_cost, decode_flops, forward_flops, forward_flops_per_token,
                                   generation_flops, param_count, prm_flops, training_flops)

# ttt-math.md §7: total parameters (tied embeddings), Mamba backbone, millions
PUBLISHED = {
    "ttt-linear-125m": 110.4, "ttt-linear-350m": 337.7, "ttt-linear-760m": 733.6, "ttt-linear-1.3b": 1285.6,
    "ttt-mlp-125m": 114.6, "ttt-mlp-350m": 348.8, "ttt-mlp-760m": 758.5, "ttt-mlp-1.3b": 1307.9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published(name):
    p = param_count(get_config(name))
    assert p.embedding == 32000 * get_config(name).d_model
    assert abs(p.total / 1e6 - PUBLISHED[name]) < 0.06, p.total / 1e6


def test_param_count_transformer_by_hand():
    cfg = get_config("tiny-transformer")  # V 256, D 64, 4 layers, FFN 128
    per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert param_count(cfg).non_embedding == 4 * per_layer + 64
    assert param_count(cfg).embedding == 256 * 64


def _cfg(**kw):
    base = dict(vocab_size=100, d_model=32, n_layers=1, n_heads=2, ffn_dim=48, mini_batch_size=4, conv_width=4)
    base.update(kw)
    return ModelConfig(**base)


def test_forward_components_by_hand_attention():
    cfg = _cfg(layer_pattern=("attention",), backbone="transformer")
    T, D = 10, 32
    f = forward_flops(cfg, T)
    assert f.dense == 8 * D * D * T
    assert f.ffn == 6 * D * 48 * T
    assert f.attention == 4 * D * sum(range(1, T + 1))  # causal: position p sees p + 1 keys
    assert f.head == 2 * D * 100 * T
    assert f.ttt_inner == f.conv == 0
    assert forward_flops(cfg, T, causal_skip=False).attention == 4 * D * T * T
    win = forward_flops(cfg.replace(sliding_window=3), T).attention
    assert win == 4 * D * (1 + 2 + 3 * (T - 2))


def test_forward_components_by_hand_ttt():
    D, H, F, K, w = 32, 2, 16, 4, 4
    lin = _cfg(layer_pattern=("ttt_linear",), backbone="mamba")
    T = 10  # mini-batches of 4, 4, 2
    f = forward_flops(lin, T)
    per_mb = lambda m: H * (6 * m * F * F + 6 * m * m * F + 2 * m * F)
    assert f.ttt_inner == per_mb(4) * 2 + per_mb(2)
    assert f.dense == (8 * D * D + 2 * H * D) * T
    assert f.conv == 6 * w * D * T
    mlp = forward_flops(lin.replace(layer_pattern=("ttt_mlp",)), T).ttt_inner
    per_mb_mlp = lambda m: H * (56 * m * F * F + 30 * m * m * F + 10 * m * F)
    assert mlp == per_mb_mlp(4) * 2 + per_mb_mlp(2)
    # the transformer backbone has no convolutions; a prefill starting mid mini-batch is cut at multiples of K
    base = lin.replace(backbone="transformer")
    assert forward_flops(base, T).conv == 0
    assert forward_flops(base, 6, start=3).ttt_inner == per_mb(1) + per_mb(4) + per_mb(1)
    dropped = forward_flops(base, T).ttt_inner - forward_flops(base, T, keep_state=False).ttt_inner
    assert dropped == H * (2 * 2 * F * F + 2 * 2 * F)  # the last (2-token) mini-batch's update


def test_six_n_rule_for_large_models():
    """Training FLOPs per token ~ 6 x parameters when the context term is small."""
    for name in ("ttt-linear-1.3b", "transformer-1.3b"):
        cfg = get_config(name)
        n = param_count(cfg).total
        ratio = training_flops(cfg, 512).per_token / (6 * n)
        assert 0.99 < ratio < 1.05, (name, ratio)


def test_training_is_three_forwards_plus_remat():
    cfg = get_config("tiny-hybrid")  # remat_group = 2: the inner loop is recomputed
    t = training_flops(cfg, 64, n_sequences=3)
    fwd = forward_flops(cfg, 64, keep_state=False)
    assert t.forward.total == pytest.approx(3 * fwd.total)
    assert t.backward.total == pytest.approx(2 * t.forward.total)
    assert t.recompute.total == pytest.approx(t.forward.ttt_inner) and t.recompute.ttt_inner > 0
    no_remat = training_flops(cfg.replace(remat_group=0), 64)
    assert no_remat.recompute.total == 0
    full = training_flops(cfg.replace(remat_layers=True), 64)
    assert full.recompute.total == pytest.approx(full.forward.total - full.forward.head)
    assert t.n_tokens == 192 and t.per_token == pytest.approx(t.total / 192)


def test_decode_attention_context_grows():
    cfg = _cfg(layer_pattern=("attention",), backbone="transformer")
    d = decode_flops(cfg, 5, start=20)
    assert d.attention == 4 * 32 * sum(range(21, 26))
    assert decode_flops(cfg, 5, start=20, cache_size=64).attention == 4 * 32 * 64 * 5
    with pytest.raises(ValueError, match="cache_size"):
        decode_flops(cfg, 5, start=20, cache_size=10)


def test_decode_ttt_cost_is_per_token():
    cfg = _cfg(layer_pattern=("ttt_linear",), backbone="transformer")
    H, F = 2, 16
    assert decode_flops(cfg, 7, start=3).ttt_inner == 7 * H * (8 * F * F + 6 * F)


@pytest.mark.parametrize("name", ["tiny-hybrid", "tiny-transformer"])
def test_generation_shares_the_prefix(name):
    cfg = get_config(name)
    P, L = 24, 10
    g1 = generation_flops(cfg, P, 1, L)
    g4 = generation_flops(cfg, P, 4, L)
    assert g4.prefill == g1.prefill  # the prompt is encoded once
    assert g4.decode.total == pytest.approx(4 * g1.decode.total)
    assert g1.decode.total == pytest.approx(decode_flops(cfg, L - 1, start=P).total)
    assert g1.prefill.head == 2 * cfg.d_model * cfg.vocab_size  # logits at the prompt's last position only
    unshared = generation_flops(cfg, P, 4, L, share_prefix=False)
    assert unshared.total - g4.total == pytest.approx(3 * g1.prefill.total)
    assert generation_flops(cfg, P, 3, 1).decode.total == 0


def test_prm_flops_and_best_of_n_cost_are_affine():
    gen, prm = get_config("tiny-hybrid"), get_config("tiny-transformer")
    P, L = 32, 16
    cost = best_of_n_cost(gen, P, L, prm_cfg=prm)
    for n in (1, 3, 8):
        direct = generation_flops(gen, P, n, L).total + prm_flops(prm, P, n, L).total
        assert cost(n) == pytest.approx(direct, rel=1e-12)
    one = prm_flops(prm, P, 1, L)
    assert one.head == 2 * prm.d_model * L  # scalar head on every sample token
    assert prm_flops(prm, P, 2, L, share_prefix=False).total > prm_flops(prm, P, 2, L).total
    assert best_of_n_cost(gen, P, L).per_sample < cost.per_sample


def test_per_token_average():
    cfg = get_config("tiny-transformer")
    assert forward_flops_per_token(cfg, 50) == pytest.approx(forward_flops(cfg, 50).total / 50)


@pytest.mark.parametrize("call,match", [
    (lambda c: forward_flops(c, 0), "n_tokens"),
    (lambda c: forward_flops(c, 4, start=-1), "start"),
    (lambda c: forward_flops(c, 4, logits="some"), "logits"),
    (lambda c: generation_flops(c, 0, 1, 4), "prompt_len"),
    (lambda c: generation_flops(c, 4, 0, 4), "n_samples"),
    (lambda c: training_flops(c, 8, n_sequences=0), "n_sequences"),
    (lambda c: AffineCost(-1.0, 1.0), "fixed"),
    (lambda c: AffineCost(0.0, 0.0), "per_sample"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(get_config("tiny-hybrid"))
