"""The checkpoints shipped in checkpoints/ load by name and are trained (better than uniform on stdlib code)."""

import inspect
import json
import textwrap

import numpy as np
from conftest import forward

import ttc_jax
from ttc_jax.checkpoints import checkpoints_dir, known_names


def test_tiny_ttt_linear_stdlib_loads_and_beats_uniform():
    assert "tiny-ttt-linear-stdlib" in known_names()
    folder = checkpoints_dir() / "tiny-ttt-linear-stdlib"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20e6
    card = (folder / "README.md").read_text()
    for needed in ("validation loss", "tokens/s", "steps", "ttc train --config tiny-ttt-linear", "stdlib"):
        assert needed in card, needed
    model, cfg, tok = ttc_jax.from_pretrained("tiny-ttt-linear-stdlib", with_tokenizer=True)
    assert cfg.layer_pattern == ("ttt_linear",) and tok.vocab_size == cfg.vocab_size
    text = textwrap.dedent(inspect.getsource(json.dumps))[:512]
    ids = np.asarray([tok.encode(text)], np.int32)
    logits = np.asarray(forward(model, ids[:, :-1]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, ids[:, 1:, None], -1).mean()
    assert nll < np.log(256) - 1.0, nll  # uniform over bytes is 5.55 nats
