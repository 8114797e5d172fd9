"""Model configurations and named presets.

A `ModelConfig` describes a decoder-only language model whose layers mix
TTT-Linear, TTT-MLP and causal self-attention. Presets reproduce the published
TTT configurations (Sun et al. 2024, Table of ttt-math.md §7) plus tiny ones
that train on a CPU.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Literal

LAYER_KINDS = ("ttt_linear", "ttt_mlp", "attention")
BACKBONES = ("transformer", "mamba")
TTT_KINDS = ("ttt_linear", "ttt_mlp")

# base_lr of the inner loop per learner (ttt-math.md §3).
DEFAULT_TTT_BASE_LR = {"ttt_linear": 1.0, "ttt_mlp": 0.1}

# epsilon of the TTT layers' LayerNorms (the per-head inner-loss norm and the post-norm), fixed as published
TTT_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of a hybrid TTT / attention language model.

    `layer_pattern` is repeated cyclically to `n_layers` layers, e.g.
    ("ttt_linear",) * 3 + ("attention",) puts attention in every 4th layer.
    `backbone` applies to TTT layers: "mamba" adds the block pre-convolution,
    the q/k convolutions and the output gate; "transformer" uses separate
    q/k/v projections. `pre_conv`, `share_qk` (one q/k projection followed by
    the two q/k convolutions, no wk) and `use_gate` set these three parts
    independently; None takes them from `backbone` (read the resolved values
    from `has_pre_conv`, `has_qk_conv`, `has_gate`). Attention layers are
    always plain Transformer blocks. `norm_eps` is the RMSNorms' epsilon; the
    TTT layers' LayerNorms use the fixed `TTT_NORM_EPS`.
    """

    vocab_size: int = 32000
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    ffn_dim: int = 2048
    layer_pattern: tuple[str, ...] = ("ttt_linear",)
    backbone: Literal["transformer", "mamba"] = "mamba"
    mini_batch_size: int = 16
    conv_width: int = 4
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    ttt_base_lr: float | None = None  # None: 1.0 for TTT-Linear, 0.1 for TTT-MLP
    sliding_window: int | None = None  # attention layers only
    attn_block_size: int = 128  # query block of uncached causal attention (0: one dense T x T block)
    remat_group: int = 4  # mini-batches per rematerialised group of the inner scan
    scan_layers: bool = True  # stack repeating layer groups and scan over them
    remat_layers: bool = False  # rematerialise each block in the backward pass
    init_std: float = 0.02
    norm_eps: float = 1e-6  # RMSNorm epsilon (block norms, pre-conv norm, final norm)
    tie_word_embeddings: bool = True  # False: a separate LM head [D, V]
    pre_conv: bool | None = None  # None: from backbone (mamba: True)
    share_qk: bool | None = None  # None: from backbone (mamba: True)
    use_gate: bool | None = None  # None: from backbone (mamba: True)
    dtype: str = "float32"  # activation dtype; parameters are always float32
    ttt_impl: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim",
                     "mini_batch_size", "conv_width", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers become Python ints
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig head width d_model/n_heads={self.head_dim} must be even (RoPE)")
        if isinstance(self.layer_pattern, str):
            object.__setattr__(self, "layer_pattern", tuple(self.layer_pattern.split(",")))
        if not self.layer_pattern:
            raise ValueError("ModelConfig.layer_pattern must name at least one layer kind")
        for kind in self.layer_pattern:
            if kind not in LAYER_KINDS:
                raise ValueError(
                    f"ModelConfig.layer_pattern has unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"ModelConfig.backbone={self.backbone!r}; expected one of {BACKBONES}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"ModelConfig.sliding_window must be None or >= 1, got {self.sliding_window!r}")
        if isinstance(self.attn_block_size, bool) or not isinstance(self.attn_block_size, numbers.Integral) \
                or self.attn_block_size < 0:
            raise ValueError(f"ModelConfig.attn_block_size must be an int >= 0 (0: dense), got {self.attn_block_size!r}")
        if self.remat_group < 0:
            raise ValueError(f"ModelConfig.remat_group must be >= 0 (0 disables remat), got {self.remat_group}")
        for name in ("pre_conv", "share_qk", "use_gate"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"ModelConfig.{name} must be None, True or False, got {getattr(self, name)!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(
                f"ModelConfig.tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"ModelConfig.dtype={self.dtype!r}; expected float32, bfloat16, float16 or float64")

    def _flag(self, name: str) -> bool:
        value = getattr(self, name)
        return self.backbone == "mamba" if value is None else value

    @property
    def has_pre_conv(self) -> bool:
        """TTT blocks start with the pre-convolution (RMSNorm then depthwise causal conv)."""
        return self._flag("pre_conv")

    @property
    def has_qk_conv(self) -> bool:
        """TTT layers project x once (wq) and get q, k from two depthwise convolutions; no wk."""
        return self._flag("share_qk")

    @property
    def has_gate(self) -> bool:
        """TTT layers gate their output with gelu_tanh(x wg)."""
        return self._flag("use_gate")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The kind of every layer, the pattern repeated to n_layers."""
        p = self.layer_pattern
        return tuple(p[i % len(p)] for i in range(self.n_layers))

    @property
    def scan_period(self) -> int | None:
        """Layers per scanned group (one period of the pattern), or None when not even one group fits;
        the last n_layers % period layers then run unscanned after the groups."""
        p = len(self.layer_pattern)
        return p if self.n_layers >= p else None

    def base_lr(self, kind: str) -> float:
        if self.ttt_base_lr is not None:
            return self.ttt_base_lr
        return DEFAULT_TTT_BASE_LR[kind]

    def replace(self, **overrides) -> "ModelConfig":
        return dataclasses.replace(self, **overrides)


# --- presets -----------------------------------------------------------------

_SIZES = {
    # name: (d_model, n_layers, n_heads, ffn_dim)
    "125m": (768, 12, 12, 2048),
    "350m": (1024, 24, 16, 2736),
    "760m": (1536, 24, 16, 4096),
    "1.3b": (2048, 24, 32, 5504),
}

# family: (layer_pattern, backbone)
_FAMILIES = {
    "ttt-linear": (("ttt_linear",), "mamba"),
    "ttt-mlp": (("ttt_mlp",), "mamba"),
    "ttt-linear-base": (("ttt_linear",), "transformer"),
    "ttt-mlp-base": (("ttt_mlp",), "transformer"),
    "transformer": (("attention",), "transformer"),
}

PRESETS: dict[str, ModelConfig] = {}
for _fam, (_pattern, _backbone) in _FAMILIES.items():
    for _size, (_d, _l, _h, _f) in _SIZES.items():
        PRESETS[f"{_fam}-{_size}"] = ModelConfig(
            d_model=_d, n_layers=_l, n_heads=_h, ffn_dim=_f,
            layer_pattern=_pattern, backbone=_backbone)

_TINY = dict(vocab_size=256, d_model=64, n_layers=4, n_heads=4, ffn_dim=128,
             mini_batch_size=8, max_seq_len=256, remat_group=2)
PRESETS.update({
    "tiny-ttt-linear": ModelConfig(**_TINY, layer_pattern=("ttt_linear",), backbone="mamba"),
    "tiny-ttt-mlp": ModelConfig(**_TINY, layer_pattern=("ttt_mlp",), backbone="mamba"),
    "tiny-ttt-linear-base": ModelConfig(**_TINY, layer_pattern=("ttt_linear",), backbone="transformer"),
    "tiny-ttt-mlp-base": ModelConfig(**_TINY, layer_pattern=("ttt_mlp",), backbone="transformer"),
    "tiny-transformer": ModelConfig(**_TINY, layer_pattern=("attention",), backbone="transformer"),
    # every 4th layer attention, TTT-Linear and TTT-MLP mixed
    "tiny-hybrid": ModelConfig(**_TINY, layer_pattern=("ttt_linear", "ttt_mlp", "ttt_linear", "attention"),
                               backbone="mamba"),
})
del _fam, _pattern, _backbone, _size, _d, _l, _h, _f


def get_config(name: str, **overrides) -> ModelConfig:
    """A named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset name={name!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
