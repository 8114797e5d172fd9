"""Prompts x samples sharded over 8 host devices: same candidates as without sharding (own process)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from ttc_jax.generate import sample
    from ttc_jax.nn import HybridLM, get_config
    assert jax.device_count() == 8, jax.devices()
    cfg = get_config("tiny-hybrid", vocab_size=64, d_model=32, n_heads=2, ffn_dim=64, mini_batch_size=4)
    model = HybridLM(cfg, rngs=nnx.Rngs(0))
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]  # ragged: the per-row path
    kw = dict(n=8, max_new_tokens=5, rng=jax.random.key(0), top_k=10)
    plain = sample(model, prompts, mesh=None, mode="batch", **kw)  # no sharding constraints
    for mode in ("batch", "vmap"):
        sharded = sample(model, prompts, mode=mode, **kw)
        assert len(sharded.tokens.sharding.device_set) == 8, (mode, sharded.tokens.sharding)
        np.testing.assert_array_equal(sharded.tokens, plain.tokens)
        np.testing.assert_allclose(sharded.logprobs, plain.logprobs, atol=1e-5)
        print(mode, "ok", sharded.tokens.sharding)
""")


@pytest.mark.slow  # a subprocess with 8 host devices, about 40 s
def test_samples_shard_over_the_data_axis_of_eight_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batch ok" in proc.stdout and "vmap ok" in proc.stdout
