"""Write the arithmetic policy's training corpus as JSONL ({"text": ...}) for `ttc data prepare` / `ttc train`.

  .venv/bin/python benchmarks/bon/make_corpus.py --out /work/coord/bon_models2/arith.jsonl --docs 300000

Documents: PAD*k + prompt + solution + EOS (see ttc_jax.tasks.arithmetic.corpus_texts); the first
--heldout problems per level of `ttc best-of-n`'s held-out sets (seed 0) are excluded.
"""

import argparse
import json

from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--docs", type=int, default=300_000)
p.add_argument("--seed", type=int, default=1000)
p.add_argument("--weights", default="easy=0.4,medium=0.45,hard=0.15")
p.add_argument("--max-left-pad", type=int, default=24)
p.add_argument("--heldout", type=int, default=1000)
a = p.parse_args()
weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(","))}
texts = A.corpus_texts(a.docs, a.seed, weights, exclude=A.heldout_prompts(a.heldout), max_left_pad=a.max_left_pad)
with open(a.out, "w") as f:
    for t in texts:
        f.write(json.dumps({"text": t}) + "\n")
print(f"wrote {len(texts)} documents to {a.out}")
