"""The one table from our parameter names to those of ttt-lm-jax and of the ttt-lm-pytorch port.

Per layer i (ttt-lm-jax prefix `model/h/{i}/`, port prefix `model.layers.{i}.`):

| ours (`layers.{i}.` + ...)              | ttt-lm-jax                                  | ttt-lm-pytorch port                            | transform (ours <- foreign)       |
|-----------------------------------------|---------------------------------------------|------------------------------------------------|-----------------------------------|
| conv.conv_norm.scale         [D]        | conv/conv_norm/kernel                       | conv.norm.weight                               | -                                 |
| conv.conv1.kernel            [w, D]     | conv/conv1/kernel [w, 1, D]                 | conv.conv.weight [D, 1, w]                     | jax: [:, 0]; port: [:, 0].T       |
| conv.conv1.bias              [D]        | conv/conv1/bias                             | conv.conv.bias                                 | -                                 |
| seq_norm.scale               [D]        | seq_norm/kernel                             | seq_norm.weight                                | -                                 |
| ffn_norm.scale               [D]        | ffn_norm/kernel                             | ffn_norm.weight                                | -                                 |
| seq_modeling_block.wq.kernel [D, D]     | seq_modeling_block/wq/kernel                | seq_modeling_block.q_proj.weight               | port: .T (Linear is [out, in])    |
| seq_modeling_block.wk.kernel            | seq_modeling_block/wk/kernel                | seq_modeling_block.k_proj.weight               | port: .T                          |
| seq_modeling_block.wv.kernel            | seq_modeling_block/wv/kernel                | seq_modeling_block.v_proj.weight               | port: .T                          |
| seq_modeling_block.wo.kernel            | seq_modeling_block/wo/kernel                | seq_modeling_block.o_proj.weight               | port: .T                          |
| seq_modeling_block.wg.kernel            | seq_modeling_block/wg/kernel                | seq_modeling_block.g_proj.weight               | port: .T                          |
| seq_modeling_block.conv_q.kernel [w, D] | seq_modeling_block/conv_q/kernel [w, 1, D]  | seq_modeling_block.conv_q.weight [D, 1, w]     | as conv1                          |
| seq_modeling_block.conv_q.bias          | seq_modeling_block/conv_q/bias              | seq_modeling_block.conv_q.bias                 | -                                 |
| seq_modeling_block.conv_k.kernel / bias | seq_modeling_block/conv_k/kernel / bias     | seq_modeling_block.conv_k.weight / bias        | as conv_q                         |
| seq_modeling_block.learnable_token_idx  | seq_modeling_block/learnable_token_idx      | seq_modeling_block.learnable_token_idx         | -                                 |
| seq_modeling_block.ttt_lr_weight [H, D] | seq_modeling_block/learnable_ttt_lr/kernel [H, D, 1] | seq_modeling_block.learnable_ttt_lr_weight [H, 1, D] | jax: [..., 0]; port: [:, 0] |
| seq_modeling_block.ttt_lr_bias [H]      | seq_modeling_block/learnable_ttt_lr/bias [H, 1] | seq_modeling_block.learnable_ttt_lr_bias [H, 1] | [:, 0]                       |
| seq_modeling_block.ttt_norm_scale [H, F]| seq_modeling_block/ttt_norm/scale           | seq_modeling_block.ttt_norm_weight             | -                                 |
| seq_modeling_block.ttt_norm_bias        | seq_modeling_block/ttt_norm/bias            | seq_modeling_block.ttt_norm_bias               | -                                 |
| seq_modeling_block.fast_weights.w1      | seq_modeling_block/ttt_dense_0              | seq_modeling_block.W1                          | -                                 |
| seq_modeling_block.fast_weights.b1      | seq_modeling_block/ttt_bias_0               | seq_modeling_block.b1                          | -                                 |
| seq_modeling_block.fast_weights.w2      | seq_modeling_block/ttt_dense_1  (MLP)       | seq_modeling_block.W2                          | -                                 |
| seq_modeling_block.fast_weights.b2      | seq_modeling_block/ttt_bias_1   (MLP)       | seq_modeling_block.b2                          | -                                 |
| seq_modeling_block.post_norm.scale      | seq_modeling_block/post_norm/scale          | seq_modeling_block.post_norm.weight            | -                                 |
| seq_modeling_block.post_norm.bias       | seq_modeling_block/post_norm/bias           | seq_modeling_block.post_norm.bias              | -                                 |
| feed_forward.w1.kernel [D, Fh] (gate)   | feed_forward/w1/kernel                      | mlp.gate_proj.weight                           | port: .T                          |
| feed_forward.w3.kernel [D, Fh] (up)     | feed_forward/w3/kernel                      | mlp.up_proj.weight                             | port: .T                          |
| feed_forward.w2.kernel [Fh, D] (down)   | feed_forward/w2/kernel                      | mlp.down_proj.weight                           | port: .T                          |

Whole model:

| ours                     | ttt-lm-jax            | port                       | transform  |
|--------------------------|-----------------------|----------------------------|------------|
| embed.embedding [V, D]   | model/wte/embedding   | model.embed_tokens.weight  | -          |
| ln_f.scale [D]           | model/ln_f/kernel     | model.norm.weight          | -          |
| lm_head.kernel [D, V]    | lm_head/kernel        | lm_head.weight [V, D]      | port: .T   |

Attention layers (ttt-lm-jax "self_attention" blocks only) use the wq/wk/wv/wo rows.
ttt-lm-jax keys are the flax path joined by "/" after the ("params", "params") prefix
(`learnable_ttt_lr/kernel` and `ttt_norm/scale` are single keys containing "/").
"""

from __future__ import annotations

import numpy as np

# (ours, ttt-lm-jax, port, transform kind)
LAYER_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("conv.conv_norm.scale", "conv/conv_norm/kernel", "conv.norm.weight", "id"),
    ("conv.conv1.kernel", "conv/conv1/kernel", "conv.conv.weight", "conv"),
    ("conv.conv1.bias", "conv/conv1/bias", "conv.conv.bias", "id"),
    ("seq_norm.scale", "seq_norm/kernel", "seq_norm.weight", "id"),
    ("ffn_norm.scale", "ffn_norm/kernel", "ffn_norm.weight", "id"),
    ("seq_modeling_block.wq.kernel", "seq_modeling_block/wq/kernel", "seq_modeling_block.q_proj.weight", "linear"),
    ("seq_modeling_block.wk.kernel", "seq_modeling_block/wk/kernel", "seq_modeling_block.k_proj.weight", "linear"),
    ("seq_modeling_block.wv.kernel", "seq_modeling_block/wv/kernel", "seq_modeling_block.v_proj.weight", "linear"),
    ("seq_modeling_block.wo.kernel", "seq_modeling_block/wo/kernel", "seq_modeling_block.o_proj.weight", "linear"),
    ("seq_modeling_block.wg.kernel", "seq_modeling_block/wg/kernel", "seq_modeling_block.g_proj.weight", "linear"),
    ("seq_modeling_block.conv_q.kernel", "seq_modeling_block/conv_q/kernel", "seq_modeling_block.conv_q.weight",
     "conv"),
    ("seq_modeling_block.conv_q.bias", "seq_modeling_block/conv_q/bias", "seq_modeling_block.conv_q.bias", "id"),
    ("seq_modeling_block.conv_k.kernel", "seq_modeling_block/conv_k/kernel", "seq_modeling_block.conv_k.weight",
     "conv"),
    ("seq_modeling_block.conv_k.bias", "seq_modeling_block/conv_k/bias", "seq_modeling_block.conv_k.bias", "id"),
    ("seq_modeling_block.learnable_token_idx", "seq_modeling_block/learnable_token_idx",
     "seq_modeling_block.learnable_token_idx", "id"),
    ("seq_modeling_block.ttt_lr_weight", "seq_modeling_block/learnable_ttt_lr/kernel",
     "seq_modeling_block.learnable_ttt_lr_weight", "lr_weight"),
    ("seq_modeling_block.ttt_lr_bias", "seq_modeling_block/learnable_ttt_lr/bias",
     "seq_modeling_block.learnable_ttt_lr_bias", "lr_bias"),
    ("seq_modeling_block.ttt_norm_scale", "seq_modeling_block/ttt_norm/scale", "seq_modeling_block.ttt_norm_weight",
     "id"),
    ("seq_modeling_block.ttt_norm_bias", "seq_modeling_block/ttt_norm/bias", "seq_modeling_block.ttt_norm_bias", "id"),
    ("seq_modeling_block.fast_weights.w1", "seq_modeling_block/ttt_dense_0", "seq_modeling_block.W1", "id"),
    ("seq_modeling_block.fast_weights.b1", "seq_modeling_block/ttt_bias_0", "seq_modeling_block.b1", "id"),
    ("seq_modeling_block.fast_weights.w2", "seq_modeling_block/ttt_dense_1", "seq_modeling_block.W2", "id"),
    ("seq_modeling_block.fast_weights.b2", "seq_modeling_block/ttt_bias_1", "seq_modeling_block.b2", "id"),
    ("seq_modeling_block.post_norm.scale", "seq_modeling_block/post_norm/scale", "seq_modeling_block.post_norm.weight",
     "id"),
    ("seq_modeling_block.post_norm.bias", "seq_modeling_block/post_norm/bias", "seq_modeling_block.post_norm.bias",
     "id"),
    ("feed_forward.w1.kernel", "feed_forward/w1/kernel", "mlp.gate_proj.weight", "linear"),
    ("feed_forward.w3.kernel", "feed_forward/w3/kernel", "mlp.up_proj.weight", "linear"),
    ("feed_forward.w2.kernel", "feed_forward/w2/kernel", "mlp.down_proj.weight", "linear"),
)

GLOBAL_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("embed.embedding", "model/wte/embedding", "model.embed_tokens.weight", "id"),
    ("ln_f.scale", "model/ln_f/kernel", "model.norm.weight", "id"),
    ("lm_head.kernel", "lm_head/kernel", "lm_head.weight", "linear"),
)

JAX_LAYER_PREFIX = "model/h/{i}/"
PORT_LAYER_PREFIX = "model.layers.{i}."
_COLUMN = {"ttt-lm-jax": 1, "port": 2}


def name_map(n_layers: int, fmt: str) -> dict[str, tuple[str, str]]:
    """foreign name -> (our flat name, transform kind) for a model with n_layers layers."""
    col = _COLUMN[fmt]
    prefix = JAX_LAYER_PREFIX if fmt == "ttt-lm-jax" else PORT_LAYER_PREFIX
    out = {row[col]: (row[0], row[3]) for row in GLOBAL_TABLE}
    for i in range(n_layers):
        for row in LAYER_TABLE:
            out[prefix.format(i=i) + row[col]] = (f"layers.{i}.{row[0]}", row[3])
    return out


def to_ours(x: np.ndarray, kind: str, fmt: str) -> np.ndarray:
    """A foreign array in our layout (see the table)."""
    if kind == "id":
        return x
    if kind == "lr_bias":
        return x[:, 0]
    if fmt == "ttt-lm-jax":
        return {"linear": lambda a: a, "conv": lambda a: a[:, 0, :], "lr_weight": lambda a: a[..., 0]}[kind](x)
    return {"linear": lambda a: a.T, "conv": lambda a: a[:, 0, :].T, "lr_weight": lambda a: a[:, 0, :]}[kind](x)


def from_ours(x: np.ndarray, kind: str, fmt: str) -> np.ndarray:
    """Our array in the foreign layout (the inverse of `to_ours`)."""
    if kind == "id":
        return x
    if kind == "lr_bias":
        return x[:, None]
    if fmt == "ttt-lm-jax":
        return {"linear": lambda a: a, "conv": lambda a: a[:, None, :], "lr_weight": lambda a: a[..., None]}[kind](x)
    return {"linear": lambda a: a.T, "conv": lambda a: a.T[:, None, :], "lr_weight": lambda a: a[:, None, :]}[kind](x)


def foreign_shape(shape: tuple[int, ...], kind: str, fmt: str) -> tuple[int, ...]:
    """The foreign shape of one of our parameter shapes."""
    return tuple(from_ours(np.broadcast_to(np.float32(0), shape), kind, fmt).shape)
