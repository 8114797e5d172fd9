"""`ttc demo --random`: build a small hybrid TTT model with random weights, run it, generate, check decoding."""

from __future__ import annotations

import numbers
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.generate import decode, prefill
from ttc_jax.nn import HybridLM, get_config


def _params_by_kind(model: HybridLM) -> dict[str, int]:
    """Parameter counts: embedding, and the blocks of every layer kind."""
    cfg = model.cfg
    counts = {"embedding": int(model.embed.embedding.size)}
    blocks = nnx.state(model.layers, nnx.Param)["blocks"]  # stacked over groups when layers are scanned
    kinds = cfg.layer_pattern if model.n_groups else cfg.layer_kinds
    for i, kind in enumerate(kinds):
        counts[kind] = counts.get(kind, 0) + sum(int(x.size) for x in jax.tree.leaves(blocks[i]))
    if model.n_groups and model.layers_rest is not None:  # layers after the last full period
        for block in model.layers_rest.blocks:
            counts[block.kind] += sum(int(x.size) for x in jax.tree.leaves(nnx.state(block, nnx.Param)))
    counts["final_norm"] = int(model.ln_f.scale.size)
    counts["total"] = sum(counts.values())
    return counts


def _timed(fn, *args, repeats=3, **kwargs):
    """(result, first-call seconds incl. compile, best steady-state seconds)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        best = min(best, time.perf_counter() - t0)
    return out, first, best


def run_demo(preset: str = "tiny-hybrid", batch: int = 4, seq_len: int = 128, new_tokens: int = 32,
             seed: int = 0) -> dict:
    """Run the demo and return its measurements."""
    for name, value, lowest, why in (("batch", batch, 1, ""), ("seq_len", seq_len, 2, " (half of it is the prompt)"),
                                     ("new_tokens", new_tokens, 1, "")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
            raise ValueError(f"{name}={value!r}; expected an int >= {lowest}{why}")
    cfg = get_config(preset)
    print(f"ttc-jax demo on {jax.default_backend()} ({jax.device_count()} device(s))")
    print(f"model {preset}: d_model={cfg.d_model} heads={cfg.n_heads} layers={cfg.layer_kinds} "
          f"backbone={cfg.backbone} K={cfg.mini_batch_size}")
    model = HybridLM(cfg, rngs=nnx.Rngs(seed))
    counts = _params_by_kind(model)
    print("parameters: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))

    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq_len)), jnp.int32)
    forward = nnx.jit(lambda m, t: m(t))
    logits, compile_s, fwd_s = _timed(forward, model, tokens)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1).mean()
    print(f"forward [{batch}, {seq_len}]: first call {compile_s:.2f}s (compile), then {fwd_s * 1e3:.1f} ms "
          f"= {batch * seq_len / fwd_s:,.0f} tokens/s; loss {float(nll):.3f} (uniform: {np.log(cfg.vocab_size):.3f})")

    _, stats = model(tokens, return_ttt_stats=True)
    for i, st in stats.items():
        before, after = float(st["loss_before"].mean()), float(st["loss_after"].mean())
        print(f"  layer {i} ({cfg.layer_kinds[i]}): inner loss per mini-batch {before:.4f} before its "
              f"update, {after:.4f} after ({100 * (after / before - 1):+.1f}%; untrained weights)")

    prompt = tokens[:, : seq_len // 2]
    size = prompt.shape[1] + new_tokens
    (last, cache), _, prefill_s = _timed(prefill, model, prompt, size)
    (generated, _), _, decode_s = _timed(decode, model, last, cache, jax.random.key(seed), steps=new_tokens,
                                         temperature=0.0, top_k=None)
    print(f"generation: prefill {prompt.shape[1]} tokens in {prefill_s * 1e3:.1f} ms, "
          f"{new_tokens} greedy tokens x {batch} rows in {decode_s * 1e3:.1f} ms "
          f"= {batch * new_tokens / decode_s:,.0f} tokens/s")
    print(f"  row 0 continues with: {np.asarray(generated[0, :16]).tolist()} ...")

    # exactness: token-by-token decoding reproduces one full pass over prompt + generated tokens
    full = forward(model, jnp.concatenate([prompt, generated], axis=1))
    greedy_full = jnp.argmax(full[:, prompt.shape[1] - 1:-1], axis=-1)
    agree = float((greedy_full == generated).mean())
    print(f"  decode vs full pass: greedy tokens agree on {agree:.0%} of positions")
    return {"preset": preset, "parameters": counts, "forward_tokens_per_s": batch * seq_len / fwd_s,
            "inner_loss": {i: {k: float(st[k].mean()) for k in ("loss_before", "loss_after")}
                           for i, st in stats.items()},
            "forward_compile_s": compile_s, "decode_tokens_per_s": batch * new_tokens / decode_s,
            "prefill_s": prefill_s, "greedy_agreement": agree, "loss": float(nll)}
