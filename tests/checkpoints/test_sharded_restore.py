"""from_pretrained(mesh=...) restores each parameter directly onto its shards (8 host devices, subprocess)."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_restore_onto_a_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_restore_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["embed_spec"] == ["tensor", "fsdp"]  # logical (vocab, embed) -> mesh axes
    assert r["embed_shard_shape"] == [16, 16]  # 64 / 4 x 32 / 2
    assert r["head_devices"] == 8
    assert r["replicated_spec"] == []
    assert r["params_equal"]
    assert r["logits_max_diff"] < 1e-5
