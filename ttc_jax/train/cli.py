"""`ttc train` and `ttc eval`."""

from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (resumes from the workdir's last checkpoint)",
                       description="Train PRESET in DIR. Re-running the same command resumes; a larger --steps "
                                   "continues. --set key=value overrides any TrainConfig field (lr, batch_size, "
                                   "seq_len, grad_accum, dtype, data_dir, mesh.data, ...) or ModelConfig field "
                                   "(d_model, or model.d_model).")
    p.add_argument("--config", required=True, metavar="PRESET", help="model preset, e.g. tiny-hybrid, ttt-mlp-125m")
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="validation loss, perplexity and loss by position of a checkpoint")
    e.add_argument("--workdir", metavar="DIR", help="a training workdir (its latest checkpoint)")
    e.add_argument("--checkpoint", metavar="PATH", help="a checkpoint step folder DIR/checkpoints/<step>")
    e.add_argument("--step", type=int, default=None)
    e.add_argument("--batches", type=int, default=None, help="validation batches (default: the whole split)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--config", default=None, metavar="PRESET", help="config when the workdir has no config.json")
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides")
    e.add_argument("--data-dir", default=None, help="evaluate on another prepared corpus's validation split")
    e.add_argument("--out", default=None, help="write OUT.json and OUT_by_position.{json,png}")
    e.set_defaults(func=_eval)


def _train(args) -> int:
    from ttc_jax.train.trainer import train
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps}; expected a positive int")
    s = train(args.config, args.workdir, steps=args.steps, overrides=args.overrides, progress=not args.no_progress)
    msg = f"step {s['step']}"
    if s.get("val_loss") is not None:
        msg += f": val_loss {s['val_loss']:.4f} ppl {s['val_ppl']:.2f}"
    if s.get("stopped"):
        msg += f" (stopped by {s['stopped']}; checkpoint saved, re-run the same command to resume)"
    print(msg)
    return 0


def _eval(args) -> int:
    from ttc_jax.train.evaluate import evaluate_checkpoint, write_report
    r = evaluate_checkpoint(args.workdir, args.checkpoint, step=args.step, n_batches=args.batches,
                            preset=args.config, overrides=args.overrides, batch_size=args.batch_size,
                            data_dir=args.data_dir)
    out = args.out or os.path.join(r["workdir"], f"eval_step{r['step']}")
    write_report(r, out)
    print(json.dumps({"step": r["step"], "val_loss": round(r["val_loss"], 5), "val_ppl": round(r["val_ppl"], 3),
                      "val_tokens": r["val_tokens"], "report": out + ".json"}))
    return 0
