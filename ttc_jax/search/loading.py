"""The policy and reward models of a best-of-N run, loaded by shipped name or path and checked against the
task (byte vocabulary, step separator): one place for `ttc best-of-n`, `ttc solve` and `ttc demo`."""

from __future__ import annotations

from ttc_jax.search import checkpoint


def load_policy_and_rewards(policy: str, prm: str | None = None, orm: str | None = None, *, vocab_size: int,
                            separator: int):
    """(policy HybridLM, PRM RewardModel or None, ORM RewardModel or None); a clear ValueError when the policy's
    vocabulary is not the task's or a reward model does not read the policy's vocabulary and separator."""
    model = checkpoint.load_policy(policy)
    if model.cfg.vocab_size != vocab_size:
        raise ValueError(f"policy vocab_size={model.cfg.vocab_size}; the task's vocabulary has {vocab_size} ids "
                         f"(expected {vocab_size})")
    out = [model]
    for name, kind in ((prm, "prm"), (orm, "orm")):
        if name is None:
            out.append(None)
            continue
        rm = checkpoint.load_reward(name)
        if rm.kind != kind:
            raise ValueError(f"{kind}={name!r} is a reward model of kind {rm.kind!r}; expected kind {kind!r}")
        rm.check_policy(model.cfg, separator)
        out.append(rm)
    return tuple(out)
