"""Parameter and FLOP accounting for the hybrid TTT / attention models of `ttc_jax.nn`.

Works on any config object with vocab_size, d_model, n_layers, n_heads, head_dim, ffn_dim,
layer_kinds (per layer "ttt_linear" | "ttt_mlp" | "attention"), backbone ("transformer" | "mamba"),
mini_batch_size (K), conv_width, sliding_window (and, for training, remat_group / remat_layers);
optionally pre_conv / share_qk / use_gate (None or absent: from the backbone) and
tie_word_embeddings (absent: tied).
The architecture is that of docs ttt-math.md: pre-norm blocks, SwiGLU FFN, tied embeddings by default.

Conventions
- A multiply-add is 2 FLOPs (as XLA counts). Only contractions are counted: dense projections,
  depthwise convolutions, attention scores and values, the inner learner's matrix products, the
  LM head. Elementwise work (norms, RoPE, activations, softmax, sigmoid, residual adds, masks) is
  not: it is a few percent of a real model (more at tiny widths), and XLA's `cost_analysis` counts
  it (one FLOP per elementwise HLO op per element), so XLA's totals come out a few percent higher.
- Per token and layer, with D = d_model, H heads of width F, ffn width Fh, conv width w:
    attention layer: 8 D^2 (q, k, v, o) + 4 D ctx (QK^T and AV over ctx keys)
    TTT layer: 8 D^2 (q, k, v, o; Mamba: q, v, o, gate) + 2 H D (token learning rate)
               + 6 w D on the Mamba backbone (conv_q, conv_k and the block's pre-conv);
               with the flags mixed: 6 D^2 (q, v, o) + 2 D^2 without share_qk (k) + 2 D^2 with use_gate,
               4 w D with share_qk (conv_q, conv_k), 2 w D with pre_conv
    FFN: 6 D Fh;  LM head: 2 D V per position that produces logits.
- TTT inner loop, dual form, per head and mini-batch of m tokens (m = K except a partial one):
    TTT-Linear: 6 m F^2 (kW, qW, W update) + 6 m^2 F (qk^T, (E*A)G, tril(E)G) + 2 m F (bias update)
    TTT-MLP (hidden 4F): 7 products of m x F x 4F -> 56 m F^2; 6 m^2 (F + 4F) = 30 m^2 F; 10 m F.
  Decoding one token at a time (state = W at the mini-batch start plus the accumulated gradient;
  the commit W - s acc is elementwise and runs only when a mini-batch ends):
    TTT-Linear 8 F^2 + 6 F per head (kW, gradient outer product, q W0, q acc; q k^T, (E*A)G, EG);
    TTT-MLP 18 F (4F) + 6 (F + 4F) per head (the same per layer, and the backward through W2).
- Attention context: a query at position p sees min(p + 1, window) keys (causal kernels skip the
  masked part); `causal_skip=False` counts every key of the block, as a naive masked softmax does.
- Training = forward + backward (2x forward) + rematerialisation (the inner loop again when
  cfg.remat_group > 0, the whole blocks again when cfg.remat_layers). The TTT update of a
  sequence's last mini-batch is not counted where the final state is discarded (training, PRM
  scoring of samples): nothing reads it and XLA removes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ttc_jax.scaling import _validate as V

_FIELDS = ("dense", "attention", "ttt_inner", "ffn", "conv", "head")


@dataclasses.dataclass(frozen=True)
class ParamCount:
    """Parameters; `embedding` is the input embedding plus, when untied, the LM head (V x D each)."""

    embedding: int
    non_embedding: int

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding


@dataclasses.dataclass(frozen=True)
class Flops:
    """FLOPs by component (2 per multiply-add; elementwise work not counted)."""

    dense: float = 0.0  # q/k/v/o/gate projections and the token learning-rate matvec
    attention: float = 0.0  # QK^T and AV over the context
    ttt_inner: float = 0.0  # the TTT inner learner (dual form, or the decode update)
    ffn: float = 0.0  # SwiGLU feed-forward
    conv: float = 0.0  # depthwise causal convolutions (Mamba backbone)
    head: float = 0.0  # LM head (or a PRM's scalar head)

    @property
    def total(self) -> float:
        return float(sum(getattr(self, f) for f in _FIELDS))

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(**{f: getattr(self, f) + getattr(other, f) for f in _FIELDS})

    def __mul__(self, s: float) -> "Flops":
        return Flops(**{f: getattr(self, f) * s for f in _FIELDS})

    __rmul__ = __mul__

    def to_dict(self) -> dict[str, float]:
        return {**{f: float(getattr(self, f)) for f in _FIELDS}, "total": self.total}


@dataclasses.dataclass(frozen=True)
class TrainingFlops:
    forward: Flops
    backward: Flops
    recompute: Flops
    n_tokens: int

    @property
    def total(self) -> float:
        return self.forward.total + self.backward.total + self.recompute.total

    @property
    def per_token(self) -> float:
        return self.total / self.n_tokens

    def to_dict(self) -> dict:
        return {"forward": self.forward.to_dict(), "backward": self.backward.to_dict(),
                "recompute": self.recompute.to_dict(), "total": self.total, "per_token": self.per_token,
                "n_tokens": self.n_tokens}


@dataclasses.dataclass(frozen=True)
class GenerationFlops:
    """A prompt prefilled once (or per sample) and n_samples continuations decoded token by token."""

    prefill: Flops
    decode: Flops  # all samples together
    n_samples: int

    @property
    def total(self) -> float:
        return self.prefill.total + self.decode.total

    def to_dict(self) -> dict:
        return {"prefill": self.prefill.to_dict(), "decode": self.decode.to_dict(), "total": self.total,
                "n_samples": self.n_samples}


@dataclasses.dataclass(frozen=True)
class AffineCost:
    """FLOPs per query as a function of the number of samples: fixed + n * per_sample."""

    fixed: float
    per_sample: float

    def __post_init__(self):
        V.positive_number("AffineCost.fixed", self.fixed, allow_zero=True)
        V.positive_number("AffineCost.per_sample", self.per_sample)

    def __call__(self, n):
        return self.fixed + n * self.per_sample

    def to_dict(self) -> dict[str, float]:
        return {"fixed": self.fixed, "per_sample": self.per_sample}


# --- parameters -------------------------------------------------------------------------------------------

def _dims(cfg: Any) -> tuple[int, int, int, int, int, int, int]:
    D, H = int(cfg.d_model), int(cfg.n_heads)
    F = int(getattr(cfg, "head_dim", D // H))
    return D, H, F, int(cfg.ffn_dim), int(cfg.vocab_size), int(cfg.mini_batch_size), int(cfg.conv_width)


def _flags(cfg: Any) -> tuple[bool, bool, bool]:
    """(pre_conv, share_qk, use_gate) of the TTT blocks; a None or missing flag follows the backbone."""
    mamba = getattr(cfg, "backbone", "mamba") == "mamba"
    pre_conv, share_qk, use_gate = (mamba if getattr(cfg, n, None) is None else bool(getattr(cfg, n))
                                    for n in ("pre_conv", "share_qk", "use_gate"))
    return pre_conv, share_qk, use_gate


def _inner_params(kind: str, H: int, F: int) -> int:
    if kind == "ttt_linear":
        return H * (F * F + F)
    return H * (F * 4 * F + 4 * F + 4 * F * F + F)


def layer_param_count(cfg: Any, kind: str) -> int:
    """Parameters of one block (norms, sequence layer, FFN) of the given layer kind."""
    D, H, F, Fh, _, K, w = _dims(cfg)
    n = 2 * D + 3 * D * Fh  # seq_norm, ffn_norm, SwiGLU
    if kind == "attention":
        return n + 4 * D * D
    if kind not in ("ttt_linear", "ttt_mlp"):
        raise ValueError(f"layer kind={kind!r}; expected 'ttt_linear', 'ttt_mlp' or 'attention'")
    pre_conv, share_qk, use_gate = _flags(cfg)
    n += (3 + (not share_qk) + use_gate) * D * D  # q, v, o [+ k] [+ gate]
    n += H * D + H + K  # token lr (theta, bias), learnable token index
    n += 2 * D + 2 * D  # ttt_norm (scale, bias per head), post_norm
    n += _inner_params(kind, H, F)
    if share_qk:
        n += 2 * (w * D + D)  # conv_q, conv_k with bias
    if pre_conv:
        n += D + w * D + D  # pre-conv: norm, depthwise conv with bias
    return n


def param_count(cfg: Any) -> ParamCount:
    """Embedding (V x D, twice when the LM head is untied) and non-embedding parameters (blocks, final norm)."""
    D = int(cfg.d_model)
    body = sum(layer_param_count(cfg, kind) for kind in cfg.layer_kinds) + D
    tables = 1 if getattr(cfg, "tie_word_embeddings", True) else 2
    return ParamCount(embedding=tables * int(cfg.vocab_size) * D, non_embedding=body)


# --- FLOPs ------------------------------------------------------------------------------------------------

def _sum_min(lo: int, hi: int, cap: float) -> float:
    """sum_{q=lo}^{hi} min(q, cap) for integers 1 <= lo <= hi."""
    if hi < lo:
        return 0.0
    c = hi if cap is None else int(min(cap, hi))
    s = 0.0
    if c >= lo:  # q in [lo, c] contribute q
        s += (lo + c) * (c - lo + 1) / 2
        s += (hi - c) * c
    else:  # every q >= lo > cap contributes cap
        s += (hi - lo + 1) * c
    return float(s)


def _chunks(start: int, n: int, K: int) -> list[int]:
    """Sizes of the pieces of positions [start, start + n) cut at multiples of K."""
    out, p, end = [], start, start + n
    while p < end:
        q = min(end, (p // K + 1) * K)
        out.append(q - p)
        p = q
    return out


def _inner_terms(kind: str, H: int, F: int, m: int) -> dict[str, float]:
    """Contractions of the dual form over one mini-batch of m tokens, by term (H heads).

    grads: f and its backward on k (k W, and G2 W2^T for TTT-MLP); output: q through the layers
    (q W) and the attention-like products (q k^T, (E*A) G, tril(E) G); w_update: the gradient
    outer products; b_update: the lr-weighted bias sums (lr * G and its sum over rows).
    """
    widths = [(F, F)] if kind == "ttt_linear" else [(F, 4 * F), (4 * F, F)]
    grads = sum(2 * m * a * b for a, b in widths) + sum(2 * m * a * b for a, b in widths[1:])
    output = sum(2 * m * a * b + 2 * m * m * a + 4 * m * m * b for a, b in widths)
    w_update = sum(2 * m * a * b for a, b in widths)
    b_update = sum(2 * m * b for _, b in widths)
    return {k: float(H * v) for k, v in
            (("grads", grads), ("output", output), ("w_update", w_update), ("b_update", b_update))}


def _inner_minibatch(kind: str, H: int, F: int, m: int) -> float:
    return sum(_inner_terms(kind, H, F, m).values())


def _inner_update(kind: str, H: int, F: int, m: int) -> float:
    """The part of `_inner_minibatch` that only produces the next state (gradient outer products, bias sums)."""
    t = _inner_terms(kind, H, F, m)
    return t["w_update"] + t["b_update"]


def _inner_decode_token(kind: str, H: int, F: int) -> float:
    if kind == "ttt_linear":
        return H * (8 * F * F + 6 * F)
    return H * (18 * F * 4 * F + 6 * (F + 4 * F))


def _check_tokens(n_tokens: int, start: int) -> tuple[int, int]:
    return V.positive_int("n_tokens", n_tokens), V.positive_int("start", start, allow_zero=True)


def _layers_flops(cfg: Any, n: int, start: int, *, decode: bool, causal_skip: bool, keep_state: bool = True,
                  cache_size: int | None = None) -> Flops:
    D, H, F, Fh, _, K, w = _dims(cfg)
    window = getattr(cfg, "sliding_window", None)
    dense = attn = inner = ffn = conv = 0.0
    pre_conv, share_qk, use_gate = _flags(cfg)
    for kind in cfg.layer_kinds:
        ffn += 6 * D * Fh * n
        if kind == "attention":
            dense += 8 * D * D * n
        else:
            dense += 2 * (3 + (not share_qk) + use_gate) * D * D * n
        if kind == "attention":
            if cache_size is not None:  # a fixed-size cache attended with a mask
                ctx = n * cache_size
            elif decode or causal_skip:
                ctx = _sum_min(start + 1, start + n, window)
            else:  # every query against every key of the block and the cache
                ctx = n * (start + n if window is None else min(window + n - 1, start + n))
            attn += 4 * D * ctx
            continue
        dense += 2 * H * D * n
        conv += (4 * share_qk + 2 * pre_conv) * w * D * n
        if decode:
            inner += n * _inner_decode_token(kind, H, F)
        else:
            chunks = _chunks(start, n, K)
            inner += sum(_inner_minibatch(kind, H, F, m) for m in chunks)
            if not keep_state:  # nothing reads the update of the last (partial) mini-batch
                inner -= _inner_update(kind, H, F, chunks[-1])
    return Flops(dense=dense, attention=attn, ttt_inner=inner, ffn=ffn, conv=conv)


def forward_flops(cfg: Any, n_tokens: int, *, start: int = 0, logits: Literal["all", "last", "none"] = "all",
                  causal_skip: bool = True, keep_state: bool = True, cache_size: int | None = None) -> Flops:
    """One parallel forward (prefill) over positions start .. start+n_tokens-1, earlier positions cached.

    logits: which positions go through the LM head ("all" for training/scoring, "last" for a prompt).
    keep_state=False drops the TTT update of the last mini-batch, which nothing reads when the final
    state is discarded (training, scoring; XLA removes it as dead code).
    cache_size: attention reads that many keys per query (a prefill into a fixed-size masked KV cache).
    """
    n, start = _check_tokens(n_tokens, start)
    if logits not in ("all", "last", "none"):
        raise ValueError(f"logits={logits!r}; expected 'all', 'last' or 'none'")
    if cache_size is not None:
        cache_size = V.positive_int("cache_size", cache_size)
        if cache_size < start + n:
            raise ValueError(f"cache_size={cache_size} < start + n_tokens = {start + n}; expected room for every token")
    n_logits = {"all": n, "last": 1, "none": 0}[logits]
    body = _layers_flops(cfg, n, start, decode=False, causal_skip=causal_skip, keep_state=keep_state,
                         cache_size=cache_size)
    return body + Flops(head=2.0 * cfg.d_model * cfg.vocab_size * n_logits)


def decode_flops(cfg: Any, n_tokens: int, *, start: int, cache_size: int | None = None) -> Flops:
    """n_tokens decoded one at a time at positions start .. start+n_tokens-1, each producing logits.

    Attention reads the keys up to the current position (capped by the window); with `cache_size`
    it reads that many keys per step instead, as an implementation attending over a fixed-size
    masked KV cache does.
    """
    n, start = _check_tokens(n_tokens, start)
    if cache_size is not None:
        cache_size = V.positive_int("cache_size", cache_size)
        if cache_size < start + n:
            raise ValueError(f"cache_size={cache_size} < start + n_tokens = {start + n}; expected room for every token")
    body = _layers_flops(cfg, n, start, decode=True, causal_skip=True, cache_size=cache_size)
    return body + Flops(head=2.0 * cfg.d_model * cfg.vocab_size * n)


def forward_flops_per_token(cfg: Any, seq_len: int, *, causal_skip: bool = True) -> float:
    """Average forward FLOPs per token of a sequence of seq_len tokens (logits at every position)."""
    return forward_flops(cfg, seq_len, causal_skip=causal_skip).total / seq_len


def training_flops(cfg: Any, seq_len: int, n_sequences: int = 1, *, causal_skip: bool = True) -> TrainingFlops:
    """Forward + backward (+ rematerialisation) over n_sequences sequences of seq_len tokens."""
    n_sequences = V.positive_int("n_sequences", n_sequences)
    fwd = forward_flops(cfg, seq_len, causal_skip=causal_skip, keep_state=False) * n_sequences
    if getattr(cfg, "remat_layers", False):
        recompute = dataclasses.replace(fwd, head=0.0)
    elif getattr(cfg, "remat_group", 0) > 0:
        recompute = Flops(ttt_inner=fwd.ttt_inner)
    else:
        recompute = Flops()
    return TrainingFlops(forward=fwd, backward=fwd * 2.0, recompute=recompute, n_tokens=seq_len * n_sequences)


def generation_flops(cfg: Any, prompt_len: int, n_samples: int, sample_len: int, *,
                     share_prefix: bool = True, cache_size: int | None = None) -> GenerationFlops:
    """Prefill the prompt (once with a shared prefix, else once per sample), then decode every sample.

    The prompt's last position yields the first sampled token; each further token is one decode step,
    so a sample of sample_len tokens costs sample_len - 1 decode steps at positions prompt_len ...
    """
    prompt_len = V.positive_int("prompt_len", prompt_len)
    n_samples = V.positive_int("n_samples", n_samples)
    sample_len = V.positive_int("sample_len", sample_len)
    prefill = forward_flops(cfg, prompt_len, logits="last") * (1 if share_prefix else n_samples)
    dec = (decode_flops(cfg, sample_len - 1, start=prompt_len, cache_size=cache_size) * n_samples
           if sample_len > 1 else Flops())
    return GenerationFlops(prefill=prefill, decode=dec, n_samples=n_samples)


def prm_flops(cfg: Any, prompt_len: int, n_samples: int, sample_len: int, *, share_prefix: bool = True) -> Flops:
    """Score n_samples continuations with a PRM (a model with a scalar head on every sample token).

    With a shared prefix the prompt is encoded once and each sample is a forward over its tokens
    with the prompt cached; otherwise each sample is encoded with its prompt.
    """
    prompt_len = V.positive_int("prompt_len", prompt_len)
    n_samples = V.positive_int("n_samples", n_samples)
    sample_len = V.positive_int("sample_len", sample_len)
    scalar = Flops(head=2.0 * cfg.d_model * sample_len)
    if share_prefix:
        prompt = forward_flops(cfg, prompt_len, logits="none")
        per = forward_flops(cfg, sample_len, start=prompt_len, logits="none", keep_state=False) + scalar
        return prompt + per * n_samples
    whole = forward_flops(cfg, prompt_len + sample_len, logits="none", keep_state=False) + scalar
    return whole * n_samples


def best_of_n_cost(gen_cfg: Any, prompt_len: int, sample_len: int, *, prm_cfg: Any = None,
                   share_prefix: bool = True, cache_size: int | None = None) -> AffineCost:
    """FLOPs per query of sampling n continuations (and scoring them with a PRM) as fixed + n * per_sample."""
    one = generation_flops(gen_cfg, prompt_len, 1, sample_len, share_prefix=share_prefix, cache_size=cache_size)
    two = generation_flops(gen_cfg, prompt_len, 2, sample_len, share_prefix=share_prefix, cache_size=cache_size)
    per = two.total - one.total
    fixed = one.total - per
    if prm_cfg is not None:
        p1 = prm_flops(prm_cfg, prompt_len, 1, sample_len, share_prefix=share_prefix).total
        p2 = prm_flops(prm_cfg, prompt_len, 2, sample_len, share_prefix=share_prefix).total
        per += p2 - p1
        fixed += p1 - (p2 - p1)
    return AffineCost(fixed=float(fixed), per_sample=float(per))
