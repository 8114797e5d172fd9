"""`ttc export`: a `ttc train` workdir as a checkpoint folder with a model card.

An LM run becomes a `save_pretrained` folder (`ttc_jax.from_pretrained`); a reward-model run (objective
prm / orm) a `save_reward_pretrained` folder (`load_reward_pretrained`). The card is written from the
workdir itself: config.json (model, optimiser, data), metrics.jsonl (training loss, validation metrics,
tokens/s) and invocations.jsonl (the `ttc train` commands that ran, their steps and wall time).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from ttc_jax.train import config as C
from ttc_jax.train import trainer as TR
from ttc_jax.train.metrics import read_jsonl, read_metrics


def _fmt(v, nd=4) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _data_rows(tcfg: C.TrainConfig, step_data) -> str:
    st = step_data.stats()
    tr, va = st["train"], st["validation"]
    what = "step labels" if tcfg.objective == "prm" else "final-correctness labels"
    val_src = (f"`{os.path.basename(tcfg.val_data)}`" if tcfg.val_data
               else f"{tcfg.val_fraction:.0%} of the prompts of `{os.path.basename(tcfg.step_data)}` (by a hash of the prompt)")
    rows = [f"| training data | `{os.path.basename(tcfg.step_data)}`: {tr['rows']} completions of {tr['prompts']} "
            f"prompts, {tr['labels']} {what} ({tr['positive']:.2f} positive) |",
            f"| validation data | {val_src}: {va['rows']} completions of {va['prompts']} prompts, {va['labels']} "
            f"{what} ({va['positive']:.2f} positive) |"]
    if tcfg.synthetic:
        rows.append(f"| synthetic stream | {tcfg.synthetic:.0%} of each training batch: the reference solution or a "
                    "corrupted one (`corrupt_steps`: one wrong result, miscopied operand or swapped operator, the "
                    "rest consistent), half each, of a training prompt, labelled exactly |")
    return "\n".join(rows)


def model_card(name: str, workdir: str, mcfg, tcfg: C.TrainConfig, step: int, n_params: int, *,
               step_data=None, final: dict | None = None, note: str = "", dst: str = "DST") -> str:
    """Markdown card of the run in `workdir` at `step`."""
    rows = read_metrics(workdir)
    calls = read_jsonl(os.path.join(workdir, "invocations.jsonl"))
    train_rows = [r for r in rows if "loss" in r and r["step"] <= step]
    val_rows = [r for r in rows if "val_loss" in r and r["step"] <= step]
    tps = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
    reward = tcfg.objective != "lm"
    last_steps = next((c["steps"] for c in reversed(calls) if c.get("steps")), None)
    if last_steps:  # config.json keeps the first invocation's --steps; the schedule follows the latest one
        tcfg = tcfg.replace(steps=last_steps)
    arch = (f"{mcfg.n_layers} layers {list(mcfg.layer_pattern)}, d_model {mcfg.d_model}, {mcfg.n_heads} heads, "
            f"FFN {mcfg.ffn_dim}, vocab {mcfg.vocab_size}")
    if reward:
        head = ("step scores at every step separator ('\\n'), trained with binary cross-entropy on per-step labels"
                if tcfg.objective == "prm" else
                "one score at the completion's last token, trained with binary cross-entropy on final correctness")
        intro = (f"{'A process' if tcfg.objective == 'prm' else 'An outcome'} reward model "
                 f"(`ttc_jax.nn.prm.RewardModel`, kind \"{tcfg.objective}\"): a sigmoid value head on a HybridLM "
                 f"backbone ({arch}; {n_params:,} parameters)"
                 f"{f', initialised from `{tcfg.init}`' if tcfg.init else ''}; {head}. Trained by `ttc train "
                 f"--objective {tcfg.objective}`.")
    else:
        intro = (f"A HybridLM ({arch}; {n_params:,} parameters) trained by `ttc train`"
                 f"{f', initialised from `{tcfg.init}`' if tcfg.init else ''}.")
    recent = [r["loss"] for r in train_rows[-5:]]
    table = ["| | |", "|---|---|"]
    if reward and step_data is not None:
        table.append(_data_rows(tcfg, step_data))
    elif not reward:
        table.append(f"| data | `{tcfg.data_dir or tcfg.corpus or 'stdlib'}` (a prepared corpus) |")
    stopped = [c for c in calls if c.get("stopped")]
    table += [
        f"| steps | {step} optimizer steps x {tcfg.batch_size} sequences x {tcfg.seq_len} tokens; AdamW lr {tcfg.lr}, "
        f"{tcfg.warmup_steps} warmup steps, cosine to {tcfg.end_lr} at step {tcfg.decay_steps or tcfg.steps}, "
        f"weight decay {tcfg.weight_decay}, clip {tcfg.clip_norm}, seed {tcfg.seed}"
        f"{f' (the checkpoint at step {step} of the {tcfg.steps}-step schedule)' if step < tcfg.steps else ''} |",
        f"| training {'BCE' if reward else 'loss'} | {_fmt(float(np.mean(recent)) if recent else None)} "
        f"(mean of the last {len(recent)} logged steps) |",
    ]
    if val_rows:
        if reward:
            cells = [f"step {r['step']}: BCE {_fmt(r['val_loss'])}, AUROC {_fmt(r.get('val_auroc'), 3)}"
                     + (f" (reference/corrupted: BCE {_fmt(r['val_synthetic_bce'])}, AUROC "
                        f"{_fmt(r.get('val_synthetic_auroc'), 3)})" if "val_synthetic_bce" in r else "")
                     for r in val_rows]
            table.append(f"| validation during training | {'; '.join(cells)} |")
        else:
            vals = ", ".join(f"{r['val_loss']:.4f} (step {r['step']})" for r in val_rows)
            table.append(f"| validation loss | {vals} |")
    if final:
        unit = "step" if tcfg.objective == "prm" else "outcome"
        v, syn = final["validation"], final.get("synthetic")
        table.append(f"| validation, these weights (step {step}) | BCE {_fmt(v['bce'])}, {unit} AUROC "
                     f"{_fmt(v['auroc'], 3)} over all {v['n']} labelled positions ({v['positive']:.2f} positive; "
                     f"mean score {_fmt(v['mean_score_positive'], 3)} right vs {_fmt(v['mean_score_negative'], 3)} "
                     f"wrong)" + (f"; on the validation prompts' reference / corrupted solutions: BCE "
                                  f"{_fmt(syn['bce'])}, AUROC {_fmt(syn['auroc'], 3)} ({syn['n']} positions)"
                                  if syn else "") + " |")
    if tps:
        table.append(f"| training tokens/s | {np.median(tps):.0f} (median of the logged windows"
                     f"{', padded positions included' if reward else ''}) |")
    if calls:
        caps = "; ".join(f"stopped by signal {c['stopped']} at step {c['step']} (a time cap: checkpoint saved)"
                         for c in stopped if c["stopped"] != "stop_after")
        table.append(f"| wall time | {sum(c.get('wall_s', 0) for c in calls) / 60:.1f} min over {len(calls)} "
                     f"invocation(s) on the machine that trained it{f'; {caps}' if caps else ''} |")
    cmds, seen = [], set()
    for c in calls:
        if c.get("command") and c["command"] not in seen:
            seen.add(c["command"])
            cmds.append(c["command"])
    load = ("from ttc_jax.search.checkpoint import load_reward_pretrained\n"
            f"rm = load_reward_pretrained(\"{name}\")   # rm(tokens) -> scores in (0, 1) at every position"
            if reward else f"import ttc_jax\nmodel, config = ttc_jax.from_pretrained(\"{name}\")")
    wd = next((c["workdir"] for c in reversed(calls) if c.get("workdir")), os.path.basename(workdir.rstrip("/")))
    repro = "\n".join(cmds + [f"ttc export {wd} {dst} --step {step} --overwrite"])
    return f"""# {name}

{intro}

{chr(10).join(table)}
{note}

```python
{load}
```

Reproduce (the `ttc train` command{'s' if len(cmds) > 1 else ''} recorded in the workdir, then the export):

```bash
{repro}
```
"""


def export_workdir(workdir: str, dst: str, *, step: int | None = None, name: str | None = None, note: str = "",
                   overwrite: bool = False):
    """Write the run in `workdir` (latest checkpoint, or `step`) to the checkpoint folder `dst` with a card."""
    from ttc_jax.checkpoints import save_pretrained
    from ttc_jax.train.evaluate import load_run

    mcfg, tcfg, preset, graphdef, state, step, _ = load_run(workdir, step=step)
    dst_given, dst = dst, os.path.abspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise ValueError(f"dst={dst!r} already exists; pass --overwrite to replace it")
    model = nnx.merge(graphdef, jax.device_get(state["params"]))
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"])))
    name = name or os.path.basename(dst.rstrip("/"))
    meta = {"trained_by": "ttc train", "objective": tcfg.objective, "train_step": int(step)}
    rows = [r for r in read_metrics(os.path.abspath(workdir))
            if "val_loss" in r and r["step"] <= step]
    if rows:
        meta["validation"] = {k: v for k, v in rows[-1].items() if k.startswith("val_")}
    if tcfg.objective == "lm":
        card = model_card(name, os.path.abspath(workdir), mcfg, tcfg, step, n_params, note=note, dst=dst_given)
        return save_pretrained(model, mcfg, dst, card=card, tokenizer="byte", metadata=meta, overwrite=overwrite)
    from ttc_jax.search.checkpoint import save_reward_pretrained
    from ttc_jax.train.reward import StepData, evaluate_reward, make_score_fn
    data = StepData(tcfg)
    score = jax.jit(make_score_fn(graphdef))
    kw = dict(kind=tcfg.objective, seq_len=tcfg.seq_len, batch_size=tcfg.micro_batch_size)
    final = {"validation": evaluate_reward(score, state["params"], data.val, **kw)}
    if data.val_synthetic:
        final["synthetic"] = evaluate_reward(score, state["params"], data.val_synthetic, **kw)
    meta["heldout"] = final
    card = model_card(name, os.path.abspath(workdir), mcfg, tcfg, step, n_params, step_data=data, final=final,
                      note=note, dst=dst_given)
    return save_reward_pretrained(model, dst, card=card, metadata=meta, overwrite=overwrite)
