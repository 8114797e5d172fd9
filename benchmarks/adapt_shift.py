"""Perplexity under a distribution shift: built-in adaptation (TTT layers), weight adaptation (`ttt_adapt`) or both.

The stdlib code models (trained on the standard library's non-test `*.py` files, bytes, context 1024)
read held-out text of three kinds: `validation` (held-out stdlib source files, the in-distribution
control), `test` (the stdlib's test-folder files test/, tests/, idle_test/, held out of training by the
corpus split: a mild shift) and `docs` (the non-`.py` prose files shipped with the stdlib, e.g.
idlelib/NEWS.txt, LICENSE.txt, email/architecture.rst: English documentation text, a strong shift).

Protocol, per document window of P_max + C tokens: the continuation is always the last C tokens; for
each prefix length P the model reads the P tokens before it plus the continuation, and the loss
(nats/byte) is the mean next-token loss of the C continuation tokens only, so the same bytes are
predicted for every P and method. Methods: no adaptation (a TTT layer still adapts its fast weights
through the context: built-in adaptation); `ttt_adapt` on the prefix (scope all / lora / last_k / norms /
ttt_w0, Adam, steps in --steps, carried over one step at a time) and then the same evaluation (weight
adaptation; on a TTT model, both). The learning rate of each (model, scope) is chosen on a separate dev
set of windows at P = --tune-prefix. Differences against no adaptation are paired by window; standard
errors are clustered by source file. FLOPs: `ttc_jax.scaling.allocate.ttt_adapt_flops` (adaptation) and
`ttc_jax.scaling.flops.forward_flops` (reading prefix + continuation).

All adaptation calls use one fixed shape per model and scope: the prefix is written at the start of a
P_max-token buffer whose remaining targets have weight 0 (the models are causal, so the padding cannot
affect the prefix loss or its gradient; tests/benchmarks/test_adapt_shift.py checks it).

    nice -n 10 python benchmarks/adapt_shift.py --out benchmarks/results/adapt/shift \
        --model ttt-linear=tiny-ttt-linear-stdlib --model transformer=/work/runs/train_tiny3/tiny-transformer \
        --model hybrid=/work/runs/train_tiny3/tiny-hybrid --model ttt-mlp=/work/runs/train_tiny3/tiny-ttt-mlp \
        --adapt ttt-linear transformer
    python benchmarks/adapt_shift.py --smoke --out /tmp/shift      # tiny random models (compiles: minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ttc_jax.adapt import ttt_adapt
from ttc_jax.scaling.allocate import ttt_adapt_flops
from ttc_jax.scaling.flops import forward_flops

SETS = ("validation", "test", "docs")
SCOPES = ("all", "ttt_w0", "norms", "lora", "last_k")  # run in this order (a time cap drops the last)
# the stdlib's own prose files (documentation text); grammars, configs, scripts and test folders are not prose
DOC_SUFFIXES = (".txt", ".rst", ".html")
DOC_NAMES = ("ChangeLog",)


# -- the measurement (pure functions of a model and one window) ------------------------------------


def make_scorer(model):
    """(params, rest, score): score(params, rest, seq [T], lr_mult) -> next-token losses [T-1] (nats), jitted
    once per sequence length; params/rest are the model's (or an adapted copy's) `nnx.split` states."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def score(params, rest, seq, lr_mult=1.0):
        logits = nnx.merge(graphdef, params, rest)(seq[None, :-1], ttt_lr_mult=lr_mult)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), seq[1:])

    return params, rest, score


def eval_sequence(window: np.ndarray, prefix_len: int, cont_len: int) -> np.ndarray:
    """The P prefix tokens before the window's last C (continuation) tokens, then the continuation."""
    return window[len(window) - cont_len - prefix_len:]


def continuation_loss(losses, prefix_len: int) -> float:
    """Mean loss of the continuation targets: `losses` [P + C - 1] of eval_sequence, targets P .. P+C-1."""
    return float(jnp.mean(losses[prefix_len - 1:]))


def adapt_buffer(window: np.ndarray, prefix_len: int, cont_len: int, buffer_len: int):
    """(tokens [buffer_len], mask [buffer_len]): the prefix at the start, zeros after it with weight 0."""
    if not 2 <= prefix_len <= buffer_len:
        raise ValueError(f"prefix_len={prefix_len}; expected 2 <= prefix_len <= buffer_len={buffer_len}")
    prefix = eval_sequence(window, prefix_len, cont_len)[:prefix_len]
    tokens = np.zeros(buffer_len, np.int32)
    tokens[:prefix_len] = prefix
    mask = np.zeros(buffer_len, np.float32)
    mask[:prefix_len] = 1.0
    return tokens, mask


def adapted_losses(model, score, window, prefix_len: int, cont_len: int, *, scope: str, lr: float,
                   steps: list[int], buffer_len: int, optimizer="adam", **kwargs) -> tuple[dict, int]:
    """({s: continuation loss after s adaptation steps on the prefix} for s in steps, rollbacks).

    One ttt_adapt call per step, each carrying the previous state over (equal to one call of max(steps)
    steps); s = 0 is a zero-step call (the original weights)."""
    tokens, mask = adapt_buffer(window, prefix_len, cont_len, buffer_len)
    seq = jnp.asarray(eval_sequence(window, prefix_len, cont_len), jnp.int32)
    out, state, rollbacks = {}, None, 0
    for s in range(0, max(steps) + 1):
        if s == 0 and 0 not in steps:
            continue
        r = ttt_adapt(model, tokens, steps=min(s, 1), lr=lr, scope=scope, optimizer=optimizer, mask=mask,
                      state=state, **kwargs)
        state = r.state if s else None
        rollbacks += int(bool(r.rolled_back))
        if s in steps:
            out[s] = continuation_loss(score(r.params, r.rest, seq), prefix_len)
    return out, rollbacks


def plain_losses(params, rest, score, window, prefix_lens, cont_len: int, lr_mult: float = 1.0) -> dict:
    """{P: continuation loss without weight adaptation} (lr_mult 0: TTT layers keep their initial W0)."""
    return {P: continuation_loss(score(params, rest, jnp.asarray(eval_sequence(window, P, cont_len), jnp.int32),
                                       lr_mult), P) for P in prefix_lens}


# -- statistics -------------------------------------------------------------------------------------


def clustered_mean_se(values, clusters) -> tuple[float, float]:
    """Mean and its cluster-robust standard error (clusters: source files; one window per file = the usual SE)."""
    v = np.asarray(values, np.float64)
    c = np.asarray(clusters)
    mean = float(v.mean())
    ids = np.unique(c)
    if len(ids) < 2:
        return mean, float("nan")
    sums = np.array([(v[c == i] - mean).sum() for i in ids])
    return mean, float(math.sqrt(len(ids) / (len(ids) - 1) * (sums ** 2).sum()) / len(v))


# -- data -------------------------------------------------------------------------------------------


def _windows_from(docs, width: int, per_doc: int, rng) -> list[dict]:
    """Non-overlapping windows of `width` tokens, up to per_doc per document at random aligned places."""
    out = []
    for name, toks in docs:
        n = len(toks) // width
        if n == 0:
            continue
        shift = int(rng.integers(0, len(toks) - n * width + 1))
        for k in sorted(rng.permutation(n)[:per_doc]):
            start = shift + int(k) * width
            out.append({"doc": name, "start": start, "tokens": np.asarray(toks[start:start + width], np.int32)})
    return out


def stdlib_split_docs(data_dir: str, split: str):
    toks = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    offsets = np.load(os.path.join(data_dir, f"{split}.offsets.npy"))
    with open(os.path.join(data_dir, f"{split}.docs.txt")) as f:
        names = [line.rstrip("\n") for line in f]
    return [(n, toks[offsets[i]:offsets[i + 1]]) for i, n in enumerate(names)]


def doc_text_files(root: str) -> list[str]:
    """The stdlib's prose files (not *.py; no test folders, site-packages, grammars or configs)."""
    from ttc_jax.data.corpus import STDLIB_EXCLUDED_DIRS, TEST_DIR_NAMES

    skip = set(STDLIB_EXCLUDED_DIRS) | set(TEST_DIR_NAMES) | {"Icons"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith(("config-", ".")))
        for name in sorted(filenames):
            if (name.endswith(DOC_SUFFIXES) or name in DOC_NAMES) and "Grammar" not in name:
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def load_sets(args, width: int, rng) -> tuple[dict, list, dict]:
    """({set: [window]} for evaluation, [window] dev windows (lr choice), description)."""
    from ttc_jax.data.corpus import stdlib_root
    from ttc_jax.data.tokenizer import ByteTokenizer
    from ttc_jax.train.config import TrainConfig
    from ttc_jax.train.trainer import resolve_data_dir

    data_dir = args.data_dir or resolve_data_dir(TrainConfig())
    root = stdlib_root()
    tok = ByteTokenizer()
    files = doc_text_files(root)
    doc_docs = []
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            doc_docs.append((rel, tok.encode_array(f.read())))
    sets, dev = {}, []
    for name in SETS:
        docs = doc_docs if name == "docs" else stdlib_split_docs(data_dir, name)
        docs = [docs[i] for i in rng.permutation(len(docs))]
        n = args.n_docs[name]
        if name == "docs":  # few long files: several windows per file, dev windows from windows left over
            per = max(1, math.ceil((n + args.n_dev_docs) / max(1, sum(len(t) >= width for _, t in docs))))
            wins = _windows_from(docs, width, per, rng)
            wins = [wins[i] for i in rng.permutation(len(wins))]
            sets[name], dev_part = wins[:n], wins[n:n + args.n_dev_docs]
        else:  # one window per file; the dev files are other files than the evaluated ones
            wins = _windows_from(docs, width, 1, rng)
            sets[name] = wins[:n]
            dev_part = wins[n:n + args.n_dev_code] if name == "test" else []
        dev += [dict(w, set=name) for w in dev_part]
    desc = {"data_dir": data_dir, "stdlib_root": root, "doc_files": files,
            "windows": {k: len(v) for k, v in sets.items()},
            "files": {k: len({w["doc"] for w in v}) for k, v in sets.items()},
            "dev_windows": [(w["set"], w["doc"], w["start"]) for w in dev]}
    return sets, dev, desc


# -- models -----------------------------------------------------------------------------------------


def load_model(source: str):
    """(model, cfg, info) from a `ttc train` workdir or a shipped checkpoint name / folder."""
    from ttc_jax.checkpoints.training import load_train_workdir

    if os.path.isfile(os.path.join(source, "config.json")) and os.path.isdir(os.path.join(source, "checkpoints")):
        model, cfg, info = load_train_workdir(source)
        val = None
        metrics = os.path.join(source, "metrics.jsonl")
        if os.path.isfile(metrics):
            with open(metrics) as f:
                rows = [json.loads(line) for line in f if '"val_loss"' in line]
            val = rows[-1]["val_loss"] if rows else None
        return model, cfg, {"source": source, "kind": "train workdir", "step": info["step"],
                            "preset": info.get("preset"), "final_val_loss": val}
    from ttc_jax import from_pretrained

    model, cfg = from_pretrained(source)
    return model, cfg, {"source": source, "kind": "shipped checkpoint", "card_validation": card_validation(source)}


def card_validation(source: str) -> str | None:
    """The 'validation loss' row of a shipped checkpoint's model card (README.md), if it has one."""
    from ttc_jax.checkpoints.store import resolve

    card = os.path.join(resolve(source), "README.md")
    if not os.path.isfile(card):
        return None
    with open(card) as f:
        rows = [line.strip() for line in f if line.startswith("| validation loss")]
    return rows[0] if rows else None


def smoke_models():
    from ttc_jax.nn.config import ModelConfig
    from ttc_jax.nn.model import HybridLM

    common = dict(vocab_size=256, d_model=16, n_layers=2, n_heads=2, ffn_dim=32, mini_batch_size=4,
                  max_seq_len=64, remat_group=0)
    out = {}
    for name, kind in (("ttt-linear", "ttt_linear"), ("transformer", "attention")):
        cfg = ModelConfig(layer_pattern=(kind,), backbone="transformer", **common)
        out[name] = (HybridLM(cfg, rngs=nnx.Rngs(0)), cfg, {"source": "random init (smoke)"})
    return out


def has_ttt(cfg) -> bool:
    return any(k != "attention" for k in cfg.layer_pattern)


def scopes_for(cfg, scopes) -> list[str]:
    return [s for s in scopes if s != "ttt_w0" or has_ttt(cfg)]


ROW_COLUMNS = ("model", "set", "window", "method", "steps", "P", "loss", "lr", "adapt_flops", "read_flops")


def compact_rows(rows: list[dict]) -> dict:
    """Rows as {"columns", "data": one list per row} (one measurement per window, method, steps and P)."""
    return {"columns": list(ROW_COLUMNS), "data": [[r.get(k) for k in ROW_COLUMNS] for r in rows]}


def write_json(results: dict, path: str) -> None:
    """results.json: indented, except one line per row and per summary cell."""
    head = {k: v for k, v in results.items() if k not in ("rows", "summary")}
    body = json.dumps(head, indent=1)[:-2]
    summ = ",\n".join(f" {json.dumps(m)}: [\n" + ",\n".join("  " + json.dumps(c) for c in cells) + "\n ]"
                      for m, cells in results.get("summary", {}).items())
    rows = results.get("rows", {"columns": [], "data": []})
    data = ",\n".join("  " + json.dumps(r) for r in rows["data"])
    text = (body + ',\n "summary": {\n' + summ + '\n },\n "rows": {"columns": ' + json.dumps(rows["columns"])
            + ', "data": [\n' + data + "\n ]}\n}\n")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# -- the run ----------------------------------------------------------------------------------------


def summarize(rows: list[dict], windows: dict, prefix_lens) -> dict:
    """Mean loss and paired difference vs no adaptation (same model, set, P), clustered SE, per cell."""
    out = {}
    base = {(r["model"], r["set"], r["P"], r["window"]): r["loss"] for r in rows if r["method"] == "none"}
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["set"], r["method"], r["steps"], r["P"]), []).append(r)
    for (model, set_, method, steps, P), rs in sorted(cells.items(), key=lambda kv: str(kv[0])):
        clusters = [windows[set_][r["window"]]["doc"] for r in rs]
        mean, se = clustered_mean_se([r["loss"] for r in rs], clusters)
        cell = {"model": model, "set": set_, "method": method, "steps": steps, "P": P, "n": len(rs),
                "loss": mean, "loss_se": se}
        if method != "none":
            d = [r["loss"] - base[(model, set_, P, r["window"])] for r in rs]
            cell["diff_vs_none"], cell["diff_se"] = clustered_mean_se(d, clusters)
        for k in ("adapt_flops", "read_flops", "lr"):
            if k in rs[0]:
                cell[k] = rs[0][k]
        out.setdefault(model, []).append(cell)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="results folder (results.json, shift.png)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                    help="a model to evaluate: a `ttc train` workdir or a shipped checkpoint (repeatable)")
    ap.add_argument("--adapt", nargs="*", default=None, help="models that also get ttt_adapt (default: all)")
    ap.add_argument("--scopes", nargs="*", default=list(SCOPES))
    ap.add_argument("--prefix-lens", type=int, nargs="*", default=[128, 256, 512, 896])
    ap.add_argument("--adapt-prefix-lens", type=int, nargs="*", default=None, help="default: --prefix-lens")
    ap.add_argument("--cont-len", type=int, default=128)
    ap.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--lrs", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2, 3e-2], help="Adam lr grid")
    ap.add_argument("--tune-prefix", type=int, default=512)
    ap.add_argument("--n-docs", nargs="*", default=["validation=12", "test=12", "docs=12"], metavar="SET=N")
    ap.add_argument("--n-dev-code", type=int, default=2, help="dev windows from test-split files not evaluated")
    ap.add_argument("--n-dev-docs", type=int, default=2, help="dev windows from docs text not evaluated")
    ap.add_argument("--data-dir", default=None, help="prepared stdlib corpus (default: the training cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-cap-min", type=float, default=30.0, help="stop adapting new scopes after this")
    ap.add_argument("--machine", default="2-core CPU shared with other jobs")
    ap.add_argument("--compile-cache", default=None, help="JAX persistent compilation cache folder (reruns)")
    ap.add_argument("--smoke", action="store_true", help="tiny random models and shapes (checks the plumbing)")
    ap.add_argument("--report-only", action="store_true", help="print the tables and redraw the plot from --out")
    args = ap.parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        plot(results, os.path.join(args.out, "shift.png"))
        print(markdown_tables(results))
        return results
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    args.n_docs = {k: int(v) for k, v in (s.split("=", 1) for s in args.n_docs)}
    if args.smoke:
        args.prefix_lens, args.cont_len, args.steps, args.lrs = [8, 16], 8, [1, 2], [1e-3, 1e-2]
        args.tune_prefix, args.n_docs, args.n_dev_code, args.n_dev_docs = 16, {s: 2 for s in SETS}, 1, 0
        args.scopes = [s for s in args.scopes if s in ("all", "ttt_w0")]
    adapt_lens = args.adapt_prefix_lens or args.prefix_lens
    p_max, C = max(args.prefix_lens), args.cont_len
    if args.tune_prefix not in adapt_lens and not args.smoke:
        raise ValueError(f"--tune-prefix {args.tune_prefix}; expected one of --adapt-prefix-lens {adapt_lens}")
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    rng = np.random.default_rng(args.seed)

    if args.smoke:
        models = smoke_models()
    else:
        if not args.model:
            raise ValueError("--model NAME=SOURCE is required (or --smoke)")
        models = {}
        for spec in args.model:
            name, src = spec.split("=", 1)
            models[name] = load_model(src)
    adapt_names = list(models) if args.adapt is None else args.adapt
    sets, dev, data_desc = load_sets(args, p_max + C, rng)
    print("windows", data_desc["windows"], "files", data_desc["files"], "dev", len(dev), flush=True)

    results = {"config": {k: v for k, v in vars(args).items() if k != "model"}, "models": {},
               "data": data_desc, "command": " ".join(["python", "benchmarks/adapt_shift.py", *(argv or sys.argv[1:])]),
               "protocol": "continuation = last cont_len tokens of each window; loss (nats/byte) on it only, with "
                           "P prefix tokens in context; ttt_adapt on the prefix (Adam, one carried-over step per "
                           "call), lr per (model, scope) chosen on the dev windows at tune_prefix and max steps",
               "lr_choice": {}, "rollbacks": {}, "timing_s": {}}
    windows = {s: [{"doc": w["doc"], "start": w["start"]} for w in ws] for s, ws in sets.items()}
    results["windows"] = windows
    rows = []
    scorers = {}
    for name, (model, cfg, info) in models.items():
        params, rest, score = make_scorer(model)
        scorers[name] = (params, rest, score)
        results["models"][name] = dict(info, n_params=int(sum(x.size for x in jax.tree.leaves(params))),
                                       layer_pattern=list(cfg.layer_pattern), backbone=cfg.backbone)
        t0 = time.time()
        mults = [("none", 1.0)] + ([("none_inner_lr0", 0.0)] if has_ttt(cfg) else [])
        for method, mult in mults:
            for set_, ws in sets.items():
                for i, w in enumerate(ws):
                    for P, loss in plain_losses(params, rest, score, w["tokens"], args.prefix_lens, C, mult).items():
                        rows.append({"model": name, "set": set_, "window": i, "method": method, "steps": 0,
                                     "P": P, "loss": loss, "read_flops": forward_flops(cfg, P + C - 1,
                                                                                     keep_state=False).total})
        results["timing_s"][f"{name}/plain"] = time.time() - t0
        print(name, "plain done", round(time.time() - t0, 1), "s", flush=True)

    def save():
        results["rows"] = compact_rows(rows)
        results["summary"] = summarize(rows, windows, args.prefix_lens)
        results["wall_s"] = time.time() - t_start
        write_json(results, os.path.join(args.out, "results.json"))

    save()
    all_scopes = [s for s in args.scopes]
    for scope in all_scopes:
        for name in adapt_names:
            model, cfg, _ = models[name]
            if scope not in scopes_for(cfg, [scope]):
                continue
            if (time.time() - t_start) / 60 > args.time_cap_min:
                results["stopped_early"] = f"time cap {args.time_cap_min} min reached before {name}/{scope}"
                print(results["stopped_early"], flush=True)
                break
            _, _, score = scorers[name]
            t0 = time.time()
            grid = {}
            for lr in args.lrs:  # the lr: lowest mean dev loss at the largest step count
                vals = [adapted_losses(model, score, w["tokens"], args.tune_prefix, C, scope=scope, lr=lr,
                                       steps=args.steps, buffer_len=p_max)[0] for w in dev]
                grid[lr] = {s: float(np.mean([v[s] for v in vals])) for s in args.steps}
            dev_none = float(np.mean([plain_losses(*scorers[name], w["tokens"], [args.tune_prefix], C)[args.tune_prefix]
                                      for w in dev]))
            lr = min(args.lrs, key=lambda x: grid[x][max(args.steps)])
            results["lr_choice"][f"{name}/{scope}"] = {"lr": lr, "dev_loss_by_lr_and_steps": grid,
                                                       "dev_loss_none": dev_none}
            t1 = time.time()
            n_rb = 0
            for set_, ws in sets.items():
                for i, w in enumerate(ws):
                    for P in adapt_lens:
                        losses, rb = adapted_losses(model, score, w["tokens"], P, C, scope=scope, lr=lr,
                                                    steps=args.steps, buffer_len=p_max)
                        n_rb += rb
                        for s, loss in losses.items():
                            rows.append({"model": name, "set": set_, "window": i, "method": scope, "steps": s,
                                         "P": P, "loss": loss, "lr": lr,
                                         "adapt_flops": ttt_adapt_flops(cfg, P, s),
                                         "read_flops": forward_flops(cfg, P + C - 1, keep_state=False).total})
            results["rollbacks"][f"{name}/{scope}"] = n_rb
            results["timing_s"][f"{name}/{scope}"] = {"tune": t1 - t0, "eval": time.time() - t1}
            print(name, scope, "lr", lr, "tune", round(t1 - t0, 1), "eval", round(time.time() - t1, 1), "s",
                  "elapsed", round((time.time() - t_start) / 60, 1), "min", flush=True)
            save()
        else:
            continue
        break
    save()
    plot(results, os.path.join(args.out, "shift.png"))
    return results


# -- report ---------------------------------------------------------------------------------------------


def markdown_tables(results: dict, steps: int | None = None) -> str:
    """Per set: rows model / method, columns prefix lengths; loss, and for adaptation the paired change vs
    no adaptation (+- clustered SE) after `steps` steps (default: the most)."""
    summ = results["summary"]
    steps = steps or max(results["config"]["steps"])
    lines = []
    for set_ in SETS:
        cells = [c for cs in summ.values() for c in cs if c["set"] == set_]
        if not cells:
            continue
        Ps = sorted({c["P"] for c in cells})
        lines += [f"**{set_}** ({cells[0]['n']} windows; loss nats/byte, adapted: change vs no adaptation "
                  f"after {steps} steps +- SE)", "", "| model | method | " + " | ".join(f"P={p}" for p in Ps) + " |",
                  "|---|---|" + "---|" * len(Ps)]
        for model, cs in summ.items():
            methods = [m for m in ["none", "none_inner_lr0", *SCOPES] if any(c["method"] == m for c in cs)]
            for m in methods:
                row = []
                for p in Ps:
                    c = next((c for c in cs if c["set"] == set_ and c["method"] == m and c["P"] == p
                              and c["steps"] == (0 if m.startswith("none") else steps)), None)
                    if c is None:
                        row.append("")
                    elif m.startswith("none"):
                        row.append(f"{c['loss']:.3f}")
                    else:
                        row.append(f"{c['diff_vs_none']:+.3f} +- {c['diff_se']:.3f}")
                label = {"none": "no adaptation", "none_inner_lr0": "no adaptation, TTT inner lr 0"}.get(
                    m, f"ttt_adapt {m} (lr {results['lr_choice'].get(f'{model}/{m}', {}).get('lr')})")
                lines.append(f"| {model} | {label} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


# -- plot -------------------------------------------------------------------------------------------


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = results["summary"]
    sets = [s for s in SETS if any(c["set"] == s for cells in summ.values() for c in cells)]
    fig, axes = plt.subplots(2, len(sets), figsize=(5.2 * len(sets), 8.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    model_color = {m: colors[i % len(colors)] for i, m in enumerate(summ)}
    styles = {"all": "--", "lora": ":", "last_k": "-.", "norms": (0, (1, 3)), "ttt_w0": (0, (5, 1))}
    for j, set_ in enumerate(sets):
        ax, bx = axes[0, j], axes[1, j]
        for m, cells in summ.items():
            cs = [c for c in cells if c["set"] == set_]
            none = sorted((c for c in cs if c["method"] == "none"), key=lambda c: c["P"])
            if not none:
                continue
            col = model_color[m]
            ax.errorbar([c["P"] for c in none], [c["loss"] for c in none], [c["loss_se"] for c in none],
                        color=col, marker="o", lw=2, label=f"{m}: no adaptation", capsize=2)
            bx.plot([c["read_flops"] for c in none], [c["loss"] for c in none], color=col, marker="o", lw=2,
                    label=f"{m}: longer context" if j == 0 else None)
            smax = max([c["steps"] for c in cs if c["method"] != "none"], default=0)
            for scope, ls in styles.items():
                ad = sorted((c for c in cs if c["method"] == scope and c["steps"] == smax), key=lambda c: c["P"])
                if ad:
                    ax.plot([c["P"] for c in ad], [c["loss"] for c in ad], color=col, ls=ls, marker=".",
                            label=f"{m}: {scope}, {smax} steps" if j == 0 else None)
                pts = [c for c in cs if c["method"] == scope]
                if pts:
                    bx.scatter([c["read_flops"] + c["adapt_flops"] for c in pts], [c["loss"] for c in pts],
                               color=col, s=10 + 6 * np.array([c["steps"] for c in pts]), alpha=0.6,
                               marker={"all": "s", "lora": "^", "last_k": "v", "norms": "D", "ttt_w0": "P"}[scope],
                               label=f"{m}: {scope} (size = steps)" if j == 0 else None)
        ax.set(xscale="log", xlabel="prefix length P (bytes)", ylabel="continuation loss (nats/byte)",
               title=f"{set_}: loss vs prefix length (bars: SE across windows)")
        ax.set_xticks(results["config"]["prefix_lens"], [str(p) for p in results["config"]["prefix_lens"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        bx.set(xscale="log", xlabel="FLOPs (read prefix + continuation, + adaptation)",
               ylabel="continuation loss (nats/byte)", title=f"{set_}: loss vs FLOPs")
        ax.grid(alpha=0.3)
        bx.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6.5, ncol=1)
    axes[1, 0].legend(fontsize=6.5, ncol=1)
    fig.suptitle("Held-out stdlib text under shift: built-in (TTT layers) vs weight (ttt_adapt) adaptation", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
