"""Ship the best-of-N models into checkpoints/: the policy from its `ttc train` workdir (save_pretrained),
the PRM and ORM from their `ttc train --objective prm|orm` workdirs (`ttc export`), each with a model card.

  .venv/bin/python benchmarks/bon/ship.py --workdir /work/coord/bon_models2/policy_run \
      --prm /work/coord/prm3/prm_run --orm /work/coord/prm3/orm_run --out checkpoints
  .venv/bin/python benchmarks/bon/ship.py --workdir ... --policy-only --out /work/coord/bon_models2  # export only
"""

import argparse
import json
import os

import numpy as np

from ttc_jax.checkpoints import save_pretrained
from ttc_jax.checkpoints.training import load_train_workdir

p = argparse.ArgumentParser()
p.add_argument("--workdir", required=True, help="the policy's ttc train workdir")
p.add_argument("--prm", default=None, help="the PRM's ttc train workdir")
p.add_argument("--orm", default=None, help="the ORM's ttc train workdir")
p.add_argument("--out", required=True)
p.add_argument("--policy-name", default="arith-policy")
p.add_argument("--policy-only", action="store_true")
p.add_argument("--results", default="benchmarks/results/bon/results.json")
p.add_argument("--steps", type=int, default=None, help="the --steps of the run's last `ttc train` invocation "
               "(a resumed run may have changed it; default: the workdir's config)")
p.add_argument("--policy-note", default="", help="markdown after the policy card's table (e.g. how the run was capped)")
p.add_argument("--extra", default="", help="markdown appended to every card (e.g. the evaluation table)")
a = p.parse_args()

model, cfg, info = load_train_workdir(a.workdir)
tr = dict(info["train"])
if a.steps:
    tr["steps"] = a.steps
rows = [json.loads(l) for l in open(os.path.join(a.workdir, "metrics.jsonl"))]
vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
n_params = sum(int(np.prod(v.shape)) for v in __import__("jax").tree.leaves(__import__("flax").nnx.state(model)))
manifest = json.load(open(os.path.join(tr["data_dir"], "manifest.json")))
ntok = manifest["splits"]["train"]["n_tokens"]
extra = open(a.extra).read() if a.extra and os.path.exists(a.extra) else a.extra
repro = f"""```bash
python benchmarks/bon/make_corpus.py --out arith.jsonl --docs 300000     # seeds >= 1000, held-out prompts excluded
ttc data prepare --source arith.jsonl --out arith_data --val-fraction 0.01
ttc train --config tiny-transformer --workdir policy_run --steps {tr['steps']} --no-progress --set \\
    d_model={cfg.d_model} ffn_dim={cfg.ffn_dim} n_layers={cfg.n_layers} max_seq_len={cfg.max_seq_len} \\
    data_dir=$PWD/arith_data seq_len={tr['seq_len']} batch_size={tr['batch_size']} lr={tr['lr']} \\
    warmup_steps={tr['warmup_steps']} eval_every={tr['eval_every']} eval_batches={tr['eval_batches']} \\
    save_every={tr['save_every']} log_every={tr['log_every']}
python benchmarks/bon/ship.py --workdir policy_run --prm prm --orm orm --out checkpoints
```"""
stopped = "" if info["step"] >= tr["steps"] else (
    f" (the run was stopped at step {info['step']} of a {tr['steps']}-step cosine schedule by its time cap; "
    "re-running the same `ttc train` command resumes it)")
card = f"""# {a.policy_name}

The best-of-N policy for the multi-step arithmetic task (`ttc_jax.tasks.arithmetic`): a byte-level
`tiny-transformer` HybridLM ({n_params:,} parameters: {cfg.n_layers} attention layers, d_model {cfg.d_model},
{cfg.n_heads} heads, FFN {cfg.ffn_dim}, vocab 256, tied embeddings), trained by `ttc train` on a packed
JSONL corpus of worked problems.

| | |
|---|---|
| data | {manifest['splits']['train']['n_documents']:,} documents ({ntok:,} byte tokens): `PAD*k + "Q:<expr>\\n" + one step per line + EOS`, k uniform in [0, 24]; levels easy 3x1 / medium 3x2 / hard 4x2 (terms x digits) drawn 0.40 / 0.45 / 0.15; the first 1,000 held-out problems per level of `ttc best-of-n` (seed 0) are excluded; 1% of documents held out for validation |
| steps | {info['step']} optimizer steps x {tr['batch_size']} x {tr['seq_len']} tokens{stopped}; AdamW lr {tr['lr']}, {tr['warmup_steps']} warmup steps, cosine to {tr['end_lr']}, weight decay {tr['weight_decay']} |
| training loss | {losses[-1][1]:.4f} nats/byte at step {losses[-1][0]} (all tokens, prompts' random digits included) |
| validation loss | {', '.join(f'{v:.4f} (step {s})' for s, v in vals) or 'n/a'} |
| training tokens/s | {np.median(tps):.0f} (median of the logged windows; a 2-core CPU shared with other jobs, nice -n 10) |

{a.policy_note}

Loss is on every byte, including the prompt's random operands (unpredictable), so it does not go to 0
even for a perfect solver.

```python
import ttc_jax
model, config = ttc_jax.from_pretrained("{a.policy_name}")
```

Reproduce:

{repro}
{extra}
"""
dst = os.path.join(a.out, a.policy_name if not a.policy_only else "policy")
save_pretrained(model, cfg, dst, card=card, tokenizer="byte", overwrite=True,
                metadata={"task": "arithmetic", "train_step": info["step"], "val_loss": vals[-1][1] if vals else None})
print("wrote", dst)

for kind, path in (("prm", a.prm), ("orm", a.orm)):
    if a.policy_only or not path:
        continue
    # the reward models are `ttc train --objective prm|orm` workdirs (benchmarks/bon/train_prm.py); `ttc export`
    # writes them with their cards
    from ttc_jax.train.export import export_workdir
    print("wrote", export_workdir(path, os.path.join(a.out, f"arith-{kind}"), name=f"arith-{kind}", note=extra,
                                  overwrite=True))
