"""Train the arithmetic PRM (or ORM) with `ttc train --objective prm|orm` and export it: a thin wrapper.

  nice -n 10 .venv/bin/python benchmarks/bon/train_prm.py --kind prm --workdir prm_run --data prm_data \
      --out checkpoints/arith-prm --minutes 15

1. `make_step_data.py` (when DATA_train.jsonl is missing): the policy's samples on 600 training problems
   (8 each, temperature 1), exact step labels and outcomes; the last 100 problems are the validation split.
2. `ttc train --config POLICY --init POLICY --objective KIND --data DATA_train.jsonl --val-data DATA_val.jsonl`
   with half of each batch from the reference / corrupted stream (`synthetic=0.5`; without it the labels
   are almost all 0 and the positives are only the references, benchmarks/results/bon/README.md); after
   --minutes it gets SIGINT, which saves a checkpoint and stops (re-running resumes).
3. `ttc export WORKDIR OUT` (with --out): a `load_reward_pretrained` folder whose card holds the numbers.
"""

import argparse
import os
import signal
import subprocess
import sys

p = argparse.ArgumentParser()
p.add_argument("--policy", default="arith-policy")
p.add_argument("--kind", default="prm", choices=["prm", "orm"])
p.add_argument("--workdir", required=True)
p.add_argument("--data", default="prm_data", help="path prefix of the step data (written when missing)")
p.add_argument("--out", default=None, help="export the result to this checkpoint folder")
p.add_argument("--steps", type=int, default=700)
p.add_argument("--minutes", type=float, default=15)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--set", nargs="*", default=[], dest="extra", help="more ttc train --set items")
a = p.parse_args()

here = os.path.dirname(os.path.abspath(__file__))
if not os.path.exists(a.data + "_train.jsonl"):
    subprocess.run([sys.executable, os.path.join(here, "make_step_data.py"), "--policy", a.policy,
                    "--out", a.data], check=True)
ttc = [sys.executable, "-m", "ttc_jax.cli"]
cmd = ttc + ["train", "--config", a.policy, "--init", a.policy, "--objective", a.kind,
             "--data", a.data + "_train.jsonl", "--val-data", a.data + "_val.jsonl", "--workdir", a.workdir,
             "--steps", str(a.steps), "--no-progress", "--set", "seq_len=80", "batch_size=32", "lr=2e-3",
             "end_lr=2e-4", "warmup_steps=50", "weight_decay=0.01", "synthetic=0.5", f"seed={a.seed}",
             "eval_every=100", "eval_batches=32", "save_every=100", "log_every=20", *a.extra]
proc = subprocess.Popen(cmd)
try:
    proc.wait(timeout=a.minutes * 60)
except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGINT)  # ttc train saves a checkpoint and stops
    proc.wait()
if proc.returncode:
    sys.exit(proc.returncode)
if a.out:
    subprocess.run(ttc + ["export", a.workdir, a.out, "--overwrite"], check=True)
