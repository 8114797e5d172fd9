"""The training loop of `ttc train`: set up (or resume) a run in a workdir, step, evaluate, log, save.

Workdir layout: config.json (the run's model + training config; a workdir holding another run's
config is refused), checkpoints/<step>/ (orbax), metrics.jsonl, tb/ (TensorBoard),
loss_by_position.{json,png} (latest validation; LM runs), invocations.jsonl (`ttc train` commands, by the
CLI). The objective "lm" trains a HybridLM on a prepared corpus; "prm" / "orm" a RewardModel on
step-labelled JSONL (`ttc_jax.train.reward`), with the same loop. Everything that can fail is checked before the
first write, so a run that fails to start overwrites nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM
from ttc_jax.train import config as C
from ttc_jax.train import metrics as M
from ttc_jax.train import optim, peaks
from ttc_jax.train import sharding as S
from ttc_jax.train.checkpoint import Checkpointer
from ttc_jax.train.step import TrainState, make_eval_step, make_train_step, summed_loss

CONFIG_FILE = "config.json"


# --- setup helpers --------------------------------------------------------------------------------

def cache_dir() -> str:
    return os.environ.get("TTC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ttc_jax"))


def resolve_data_dir(tcfg: C.TrainConfig) -> str:
    """The prepared data dir of the run: tcfg.data_dir, or tcfg.corpus (default: the stdlib) prepared once
    into the cache."""
    if tcfg.data_dir:
        if not os.path.isfile(os.path.join(tcfg.data_dir, "manifest.json")):
            raise ValueError(f"data_dir={tcfg.data_dir!r} is not a prepared corpus (no manifest.json); "
                             "run `ttc data prepare` first")
        return tcfg.data_dir
    from ttc_jax.data import prepare_corpus
    src = tcfg.corpus or "stdlib"
    tag = hashlib.sha256(f"{os.path.abspath(src) if src != 'stdlib' else src}|{tcfg.tokenizer}".encode()
                         ).hexdigest()[:12]
    out = os.path.join(cache_dir(), "data", f"{os.path.basename(src.rstrip('/')) or 'corpus'}-{tag}")
    prepare_corpus(None if src == "stdlib" else src, out, tokenizer=tcfg.tokenizer)
    return out


def mesh_config(tcfg: C.TrainConfig) -> S.MeshConfig:
    return S.MeshConfig(data=tcfg.mesh.data, fsdp=tcfg.mesh.fsdp, tensor=tcfg.mesh.tensor)


def make_mesh(tcfg: C.TrainConfig) -> jax.sharding.Mesh:
    """The run's ("data", "fsdp", "tensor") mesh; one-line error unless its product is the device count."""
    return S.make_mesh(mesh_config(tcfg))


def check_mesh_divides(mcfg: ModelConfig, tcfg: C.TrainConfig) -> None:
    """A one-line error unless the micro-batch splits over data x fsdp and heads/widths over the mesh."""
    S.check_divisibility(mcfg, tcfg.micro_batch_size, mesh_config(tcfg))


def build_model(mcfg: ModelConfig, seed: int, objective: str = "lm"):
    """The trained module: a HybridLM ("lm") or a RewardModel on a HybridLM backbone ("prm" / "orm")."""
    if objective == "lm":
        return HybridLM(mcfg, rngs=nnx.Rngs(seed))
    from ttc_jax.train.reward import build_reward_model
    return build_reward_model(mcfg, objective, seed)


def abstract_model(mcfg: ModelConfig, seed: int, mesh=None, objective: str = "lm"):
    """(graphdef, abstract params as a pure dict[, their NamedShardings on `mesh`]) without allocating."""
    model = nnx.eval_shape(lambda: build_model(mcfg, seed, objective))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    if mesh is None:
        return graphdef, params
    return graphdef, params, nnx.to_pure_dict(S.param_shardings(state, mesh))


def ttt_peak_base_lr(mcfg: ModelConfig) -> float:
    """The model-wide base lr the official ramp is relative to (0.1 when any layer is TTT-MLP)."""
    if mcfg.ttt_base_lr is not None:
        return mcfg.ttt_base_lr
    return 0.1 if "ttt_mlp" in mcfg.layer_kinds else 1.0


def _write_json_atomic(path: str, obj) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


@dataclasses.dataclass
class Run:
    """A configured run bound to a workdir, its mesh, its compiled functions and its state."""

    preset: str
    workdir: str
    mcfg: ModelConfig
    tcfg: C.TrainConfig
    mesh: Any
    graphdef: Any
    state: TrainState
    state_shardings: Any
    data_dir: str
    train_iter: Any
    checkpointer: Checkpointer
    start_step: int
    step_data: Any = None  # prm/orm: the `reward.StepData` (training and validation examples)


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _abstract_train_state(mcfg, tcfg, tx, mesh):
    """(graphdef, abstract TrainState, its shardings): optimizer moments follow their parameter."""
    graphdef, params, p_sh = abstract_model(mcfg, tcfg.seed, mesh, tcfg.objective)
    by_path = {_names(p): s for p, s in jax.tree_util.tree_flatten_with_path(p_sh)[0]}
    rep = NamedSharding(mesh, P())

    def opt_sharding(path, leaf):
        names = _names(path)
        for i in range(len(names)):
            if names[i:] in by_path:
                return by_path[names[i:]]
        return rep

    opt = jax.eval_shape(tx.init, params)
    o_sh = jax.tree_util.tree_map_with_path(opt_sharding, opt)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt, jax.ShapeDtypeStruct((2,), jnp.uint32))
    return graphdef, state, TrainState(rep, p_sh, o_sh, rep)


def _init_state(mcfg, tcfg, tx, shardings, init_params: dict | None = None) -> TrainState:
    """A fresh state; `init_params` (a subtree of the pure params dict, from `--init`) replaces its part."""
    def init(loaded):
        model = build_model(mcfg, tcfg.seed, tcfg.objective)
        params = nnx.to_pure_dict(nnx.split(model)[1])
        if loaded is not None:
            params = _overlay(params, loaded)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                          jax.random.key_data(jax.random.key(tcfg.seed)))
    return jax.jit(init, out_shardings=shardings)(init_params)


def _overlay(params: dict, loaded: dict) -> dict:
    out = dict(params)
    for k, v in loaded.items():
        out[k] = _overlay(params[k], v) if isinstance(v, dict) else v
    return out


# ModelConfig fields that define the function an --init checkpoint computes (the rest are precision,
# remat, scan and kernel choices that a training run may set differently).
_ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim", "layer_pattern", "backbone",
                "mini_batch_size", "conv_width", "rope_theta", "ttt_base_lr", "sliding_window", "norm_eps",
                "tie_word_embeddings", "pre_conv", "share_qk", "use_gate")


def load_init_params(init: str, mcfg: ModelConfig, objective: str, target_params: dict, preset: str) -> dict:
    """The pure-dict parameters of checkpoint `init` laid out like the run's params (a reward model's
    backbone, plus its head when `init` is itself a reward model of the same kind); one-line errors
    when it does not match the run's config."""
    from ttc_jax.checkpoints.store import read_config, resolve
    folder = resolve(init)
    icfg, doc = read_config(folder)
    for f in _ARCH_FIELDS:
        if getattr(icfg, f) != getattr(mcfg, f):
            raise ValueError(f"--init={init!r} does not match --config={preset!r}: its {f} is "
                             f"{getattr(icfg, f)!r}, the config's is {getattr(mcfg, f)!r}")
    rm_meta = (doc.get("metadata") or {}).get("reward_model")
    if objective != "lm" and isinstance(rm_meta, dict) and rm_meta.get("kind") == objective:
        from ttc_jax.search.checkpoint import load_reward_pretrained
        loaded = nnx.to_pure_dict(nnx.state(load_reward_pretrained(str(folder)), nnx.Param))
    else:
        from ttc_jax.checkpoints.store import load_folder
        model = load_folder(folder)[0]
        loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        if objective != "lm":
            loaded = {"backbone": loaded}
    want = target_params if objective == "lm" or "head" in loaded else target_params["backbone"]
    got = loaded if objective == "lm" or "head" in loaded else loaded["backbone"]
    gs, ws = _shapes(got), _shapes(want)
    for k in sorted(set(gs) | set(ws)):
        if gs.get(k) != ws.get(k):
            raise ValueError(f"--init={init!r} does not match --config={preset!r}: parameter {k} has shape "
                             f"{gs.get(k)} in the checkpoint, {ws.get(k)} in the config")
    return loaded


def _shapes(tree) -> dict:
    return {"/".join(_names(p)): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def setup(preset: str, workdir: str, *, steps: int | None = None, overrides: list[str] | None = None,
          config: tuple[ModelConfig, C.TrainConfig] | None = None, async_save: bool = True) -> Run:
    """Validate everything, then create or resume the run in `workdir`."""
    S.maybe_initialize_distributed()  # multi-host: before anything touches the devices
    if config is None:
        mcfg, tcfg = C.run_config(preset, overrides, steps=steps)
    else:
        mcfg, tcfg = config
        if steps is not None:
            tcfg = tcfg.replace(steps=steps)
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r} exists and is not a directory")
    new_json = C.to_json(mcfg, tcfg, preset)
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            old_json = json.load(f)
        diffs = C.diff_identity(old_json, new_json)
        if diffs:
            raise ValueError(f"--workdir={workdir!r} holds another run's config ({'; '.join(diffs[:3])}"
                             f"{'; ...' if len(diffs) > 3 else ''}); use a new workdir")
    elif os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"--workdir={workdir!r} has checkpoints but no {CONFIG_FILE}; refusing to guess its config")
    check_mesh_divides(mcfg, tcfg)
    mesh = make_mesh(tcfg)
    n_proc = jax.process_count()
    if tcfg.batch_size % n_proc:
        raise ValueError(f"batch_size={tcfg.batch_size} is not divisible by the {n_proc} processes")
    step_data = None
    if tcfg.objective == "lm":
        data_dir = resolve_data_dir(tcfg)
        from ttc_jax.data import make_iterator
        train_iter = make_iterator(data_dir, "train", seq_len=tcfg.seq_len, batch_size=tcfg.batch_size // n_proc,
                                   seed=tcfg.seed, shard_index=jax.process_index(), shard_count=n_proc,
                                   vocab_size=mcfg.vocab_size)
    else:
        from ttc_jax.train.reward import RewardBatches, StepData
        if tcfg.tokenizer != "byte" or mcfg.vocab_size != 256:
            raise ValueError(f"objective={tcfg.objective!r} reads step data as bytes; expected tokenizer 'byte' and "
                             f"vocab_size 256, got {tcfg.tokenizer!r} and {mcfg.vocab_size}")
        step_data = StepData(tcfg)
        data_dir = os.path.abspath(tcfg.step_data)
        train_iter = RewardBatches(step_data, batch_size=tcfg.batch_size // n_proc, seq_len=tcfg.seq_len,
                                   synthetic=tcfg.synthetic, max_left_pad=tcfg.max_left_pad, seed=tcfg.seed,
                                   shard_index=jax.process_index())
    tx = optim.make_optimizer(tcfg)
    graphdef, target, shardings = _abstract_train_state(mcfg, tcfg, tx, mesh)
    target_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)

    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest = None
    if os.path.isdir(ckpt_dir):
        reader = Checkpointer(ckpt_dir, read_only=True)
        latest = reader.latest_step()
        if latest is not None:
            reader.check_compatible(latest, target_sharded._asdict())
    init_params = None
    if tcfg.init and latest is None:
        init_params = load_init_params(tcfg.init, mcfg, tcfg.objective, target.params, preset)
    # --- nothing above writes; from here on the run is valid ---
    os.makedirs(workdir, exist_ok=True)
    if not os.path.isfile(cfg_path):
        _write_json_atomic(cfg_path, new_json)
    checkpointer = Checkpointer(ckpt_dir, keep=tcfg.keep, async_save=async_save)
    if latest is not None:
        restored, data_state = checkpointer.restore(latest, target_sharded._asdict())
        state = TrainState(**restored)
        if data_state:
            train_iter.set_state(data_state)
        start = int(state.step)
    else:
        with S.use_mesh(mesh):
            state = _init_state(mcfg, tcfg, tx, shardings, init_params)
        start = 0
    return Run(preset, workdir, mcfg, tcfg, mesh, graphdef, state, shardings, data_dir, train_iter,
               checkpointer, start, step_data)


# --- evaluation --------------------------------------------------------------------------------------

def evaluate(graphdef, params, data_dir: str, mcfg: ModelConfig, *, seq_len: int, batch_size: int,
             n_batches: int | None, mesh=None, eval_fn=None) -> dict:
    """Validation loss, perplexity and loss by position over the first n_batches (None: all) batches of
    the validation split, in a fixed order."""
    from ttc_jax.data import make_iterator
    it = make_iterator(data_dir, "validation", seq_len=seq_len, batch_size=batch_size, shuffle=False,
                       vocab_size=mcfg.vocab_size, num_epochs=1)
    eval_fn = eval_fn or jax.jit(make_eval_step(graphdef))
    loss_sum = np.zeros(seq_len, np.float64)
    count = np.zeros(seq_len, np.float64)
    for i, batch in enumerate(it):
        if n_batches is not None and i >= n_batches:
            break
        batch = {k: batch[k] for k in ("inputs", "targets", "mask")}
        if mesh is not None:
            batch = jax.device_put(batch, S.batch_sharding(mesh))
        s, c = eval_fn(params, batch)
        loss_sum += np.asarray(s, np.float64)
        count += np.asarray(c, np.float64)
    if count.sum() == 0:
        raise ValueError(f"the validation split of {data_dir!r} has no scored tokens")
    loss = float(loss_sum.sum() / count.sum())
    return {"val_loss": loss, "val_ppl": float(np.exp(loss)), "val_tokens": int(count.sum()),
            "loss_by_position": M.loss_by_position(loss_sum, count)}


def evaluate_reward_run(run: Run, params, score_fn) -> dict:
    """A reward-model run's validation metrics: val_loss (= BCE) and val_auroc on the validation rows,
    plus val_synthetic_bce / val_synthetic_auroc on their prompts' reference / corrupted solutions."""
    from ttc_jax.train.reward import evaluate_reward
    tcfg, data = run.tcfg, run.step_data
    kw = dict(kind=tcfg.objective, seq_len=tcfg.seq_len, batch_size=tcfg.micro_batch_size,
              n_batches=tcfg.eval_batches)
    r = evaluate_reward(score_fn, params, data.val, **kw)
    out = {"val_loss": r["bce"], "val_auroc": r["auroc"], "val_positions": r["n"]}
    if data.val_synthetic:
        r = evaluate_reward(score_fn, params, data.val_synthetic, **kw)
        out.update(val_synthetic_bce=r["bce"], val_synthetic_auroc=r["auroc"])
    return out


# --- the loop ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _stop_on_signals():
    """Yields a dict whose "signal" is set by SIGTERM/SIGINT (the loop then saves and exits)."""
    flag = {"signal": None}
    if jax.process_count() > 1 or not _main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def train(preset: str, workdir: str, *, steps: int | None = None, overrides: list[str] | None = None,
          config: tuple[ModelConfig, C.TrainConfig] | None = None, progress: bool = True,
          stop_after: int | None = None, on_step: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) until `steps`; returns a summary. `stop_after` ends this invocation after that
    many steps as if preempted (a checkpoint is saved); `on_step(step)` is called after every step."""
    run = setup(preset, workdir, steps=steps, overrides=overrides, config=config)
    mcfg, tcfg = run.mcfg, run.tcfg
    tx = optim.make_optimizer(tcfg)
    schedule = optim.lr_schedule(tcfg)
    base = ttt_peak_base_lr(mcfg)
    reward = tcfg.objective != "lm"
    if reward:
        from ttc_jax.train import reward as R
    step_fn = make_train_step(run.graphdef, tx, tcfg, lr_mult_fn=lambda s: optim.ttt_lr_mult(tcfg, base, s),
                              schedule=schedule, with_stats=not reward and tcfg.ttt_stats and any(
                                  k != "attention" for k in mcfg.layer_kinds),
                              loss_fn=R.summed_bce if reward else summed_loss)
    b_sh = S.batch_sharding(run.mesh)
    jit_step = jax.jit(step_fn, in_shardings=(run.state_shardings, b_sh),
                       out_shardings=(run.state_shardings, None), donate_argnums=(0,))
    eval_fn = jax.jit(R.make_score_fn(run.graphdef) if reward else make_eval_step(run.graphdef))
    flops_tok = M.train_flops_per_token(mcfg, tcfg.seq_len)
    peak = peaks.total_peak_flops()
    logger = M.MetricsLogger(run.workdir)
    state, step = run.state, run.start_step
    bar = M.progress_bar(tcfg.steps, step, enabled=progress)
    summary: dict[str, Any] = {"workdir": run.workdir, "start_step": step}
    last_eval: dict = {}
    t_window, steps_window, first = time.perf_counter(), 0, True
    stopped = None
    try:
        with S.use_mesh(run.mesh), _stop_on_signals() as flag:
            while step < tcfg.steps:
                batch = next(run.train_iter)
                batch = {k: batch[k] for k in (("inputs", "labels", "weights") if reward
                                                else ("inputs", "targets", "mask"))}
                batch = jax.make_array_from_process_local_data(b_sh, batch) if jax.process_count() > 1 \
                    else jax.device_put(batch, b_sh)
                state, met = jit_step(state, batch)
                step += 1
                steps_window += 1
                if first:  # exclude compilation from the throughput window
                    jax.block_until_ready(met["loss"])
                    t_window, steps_window, first = time.perf_counter(), 0, False
                bar.update(1)
                val_loss = None
                if step % tcfg.log_every == 0 or step == tcfg.steps:
                    met = jax.device_get(met)
                    dt = time.perf_counter() - t_window
                    row = {k: v for k, v in met.items() if k != "tokens"}
                    if steps_window:
                        tps = steps_window * tcfg.tokens_per_step / dt
                        row.update(tokens_per_s=tps, mfu=M.mfu(tps, flops_tok, peak))
                    row = logger.write(step, row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row.get('tokens_per_s', 0):.0f}")
                    t_window, steps_window = time.perf_counter(), 0
                if (step % tcfg.eval_every == 0 or step == tcfg.steps) and reward:
                    last_eval = evaluate_reward_run(run, state.params, eval_fn)
                    val_loss = last_eval["val_loss"]
                    logger.write(step, {k: v for k, v in last_eval.items() if v is not None})
                    bar.write(f"step {step}: val_bce {val_loss:.4f} val_auroc {last_eval['val_auroc']}")
                    t_window, steps_window = time.perf_counter(), 0  # exclude eval time
                elif step % tcfg.eval_every == 0 or step == tcfg.steps:
                    last_eval = evaluate(run.graphdef, state.params, run.data_dir, mcfg, seq_len=tcfg.seq_len,
                                         batch_size=tcfg.micro_batch_size, n_batches=tcfg.eval_batches,
                                         mesh=run.mesh, eval_fn=eval_fn)
                    val_loss = last_eval["val_loss"]
                    logger.write(step, {"val_loss": val_loss, "val_ppl": last_eval["val_ppl"]})
                    M.save_loss_by_position(os.path.join(run.workdir, "loss_by_position"),
                                            {f"{run.preset} step {step}": last_eval["loss_by_position"]})
                    bar.write(f"step {step}: val_loss {val_loss:.4f} ppl {last_eval['val_ppl']:.2f}")
                    t_window, steps_window = time.perf_counter(), 0  # exclude eval time
                if on_step is not None:
                    on_step(step)
                preempt = flag["signal"] is not None or (stop_after is not None
                                                         and step - run.start_step >= stop_after)
                if step % tcfg.save_every == 0 or step == tcfg.steps or preempt:
                    run.checkpointer.save(step, state._asdict(), run.train_iter.get_state(), val_loss=val_loss)
                if preempt:
                    stopped = flag["signal"] or "stop_after"
                    break
    finally:
        run.checkpointer.close()
        logger.close()
        bar.close()
    summary.update(step=step, stopped=stopped, val_loss=last_eval.get("val_loss"),
                   val_ppl=last_eval.get("val_ppl"), val_auroc=last_eval.get("val_auroc"))
    summary["state"] = state
    return summary
