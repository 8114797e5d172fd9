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
    p.add_argument("--objective", default=None, metavar="lm|prm|orm",
                   help="lm: next-token loss (default); prm / orm: a reward model (sigmoid value head) trained "
                        "with BCE on step-labelled JSONL (--data), validated by BCE and AUROC")
    p.add_argument("--data", default=None, metavar="JSONL", help="prm/orm: step-labelled training data "
                   "({prompt, steps, labels[, outcome]} per line); the set key step_data")
    p.add_argument("--val-data", default=None, metavar="JSONL",
                   help="prm/orm: validation data (default: val_fraction of --data's prompts)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (a name such as arith-policy, or a folder); its "
                        "architecture must match --config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    x = sub.add_parser("export", help="a `ttc train` workdir as a checkpoint folder with a model card",
                       description="Write WORKDIR's latest (or --step) checkpoint to DST as a from_pretrained "
                                   "folder (a reward model: load_reward_pretrained), with a model card giving the "
                                   "data, steps, validation metrics, tokens/s and the ttc train command(s) that "
                                   "produced it.")
    x.add_argument("workdir")
    x.add_argument("dst")
    x.add_argument("--step", type=int, default=None)
    x.add_argument("--name", default=None, help="the model's name in the card (default: DST's folder name)")
    x.add_argument("--note", default="", help="markdown (or a file of it) added to the card")
    x.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    x.set_defaults(func=_export)

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


def _flag_overrides(args) -> list[str]:
    """--objective/--data/--val-data/--init as --set items (TrainConfig fields; paths made absolute)."""
    out = []
    if args.objective is not None:
        out.append(f"objective={args.objective}")
    for flag, key in (("data", "step_data"), ("val_data", "val_data")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={os.path.abspath(getattr(args, flag))}")
    if args.init is not None:
        out.append(f"init={args.init}")
    return out


def train_command(args) -> str:
    """The `ttc train` command line of these parsed arguments (paths as given)."""
    import shlex
    parts = ["ttc", "train", "--config", args.config, "--workdir", args.workdir]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    for flag in ("objective", "data", "val_data", "init"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.no_progress:
        parts.append("--no-progress")
    if args.overrides:
        parts += ["--set", *args.overrides]
    return " ".join(shlex.quote(p) for p in parts)


def _train(args) -> int:
    import time

    from ttc_jax.train.trainer import train
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps}; expected a positive int")
    t0 = time.time()
    s = train(args.config, args.workdir, steps=args.steps, overrides=args.overrides + _flag_overrides(args),
              progress=not args.no_progress)
    with open(os.path.join(s["workdir"], "invocations.jsonl"), "a") as f:  # for the model card (ttc export)
        f.write(json.dumps({"command": train_command(args), "workdir": args.workdir, "steps": args.steps,
                            "start_step": s["start_step"], "step": s["step"], "stopped": s.get("stopped"),
                            "wall_s": round(time.time() - t0, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
                + "\n")
    msg = f"step {s['step']}"
    if s.get("val_auroc") is not None or (s.get("val_loss") is not None and s.get("val_ppl") is None):
        msg += f": val_bce {s['val_loss']:.4f} val_auroc {s.get('val_auroc')}"
    elif s.get("val_loss") is not None:
        msg += f": val_loss {s['val_loss']:.4f} ppl {s['val_ppl']:.2f}"
    if s.get("stopped"):
        msg += f" (stopped by {s['stopped']}; checkpoint saved, re-run the same command to resume)"
    print(msg)
    return 0


def _export(args) -> int:
    from ttc_jax.train.export import export_workdir
    note = open(args.note).read() if args.note and os.path.isfile(args.note) else args.note
    out = export_workdir(args.workdir, args.dst, step=args.step, name=args.name, note=note, overwrite=args.overwrite)
    print(f"wrote {out}")
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
