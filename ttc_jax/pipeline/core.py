"""`Pipeline.solve`: one query under a FLOP budget, composing the three test-time-compute methods.

    1. probe    k cheap samples from the policy, scored by the PRM: the query's difficulty score (the
                mean last-step score; without a PRM, the share of probes agreeing with their majority)
                -> a difficulty bin (`DifficultyBins`, quantiles calibrated on other queries);
    2. plan     with text to adapt on (`adapt_prefix`) and a fitted `AdaptationGain` for the bin:
                (N copies, steps) = allocate(remaining budget) ("adapt per sample; generate; select");
                otherwise (selection rule, N) = the best measured accuracy of the bin's curves that fits;
    3. run      N samples (probes reused as candidates when not adapting), or N adapted copies
                (`ttt_adapt_many`) sampled in one call (`sample_adapted`); PRM scores;
    4. select   majority / weighted best-of-N / PRM argmax over the candidates' final answers;
    5. ledger   analytic FLOPs of every computation that ran, by component (`FlopLedger`).

Prompts are laid out as the task's training data (PAD on the left, length rounded up to a bucket) so a
handful of shapes compile; the ledger counts those executed shapes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import jax
import numpy as np

from ttc_jax.adapt import sample_adapted, ttt_adapt, ttt_adapt_many
from ttc_jax.generate import prefill_prompts, sample
from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel, aggregate
from ttc_jax.pipeline import ledger as LG
from ttc_jax.pipeline.plan import EXECUTABLE, Choice, DifficultyBins, choose_adapted, choose_pool, needs_prm, rule_at
from ttc_jax.scaling.allocate import AdaptationGain, allocate_shared
from ttc_jax.scaling.curves import Curve, CurveSet, Strategy
from ttc_jax.scaling.flops import AffineCost
from ttc_jax.scaling.planner import Plan, plan_budget
from ttc_jax.search import selection as SEL
from ttc_jax.search.lm import RewardScorer, TextCodec

ADAPT_MODES = ("shared", "per_sample")
AGGREGATION = {"weighted_best_of_n_prm": "last", "best_of_n_prm_last": "last", "best_of_n_prm_min": "min",
               "best_of_n_prm_prod": "prod"}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    probe_n: int = 4  # probe samples per query (reused as candidates when not adapting)
    max_new_tokens: int = 96
    temperature: float = 1.0
    adapt_lr: float = 1e-3
    adapt_scope: str = "all"
    adapt_optimizer: str = "sgd"
    max_adapt_steps: int = 16
    adapt_mode: str = "shared"  # "shared": one adapted copy samples all N; "per_sample": a copy per sample

    def __post_init__(self):
        if self.adapt_mode not in ADAPT_MODES:
            raise ValueError(f"PipelineConfig.adapt_mode={self.adapt_mode!r}; expected one of {ADAPT_MODES}")
        for name in ("probe_n", "max_new_tokens", "max_adapt_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PipelineConfig.{name}={v!r}; expected an int >= 1")
        for name in ("temperature", "adapt_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"PipelineConfig.{name}={v!r}; expected a finite number > 0")


@dataclasses.dataclass
class Solution:
    answer: str | None
    completion: str  # the chosen candidate's text ("" when none has an answer)
    bin: str
    difficulty: float
    choice: Choice
    candidates: list[str]
    answers: list[str | None]
    ledger: LG.FlopLedger

    def to_dict(self) -> dict:
        return {"answer": self.answer, "completion": self.completion, "bin": self.bin,
                "difficulty": self.difficulty, "choice": dataclasses.asdict(self.choice),
                "n_candidates": len(self.candidates), "flops": self.ledger.to_dict()}


class Pipeline:
    """A policy, an optional PRM, measured curves, difficulty bins and optional adaptation gains per bin."""

    def __init__(self, policy: HybridLM, codec: TextCodec, answer_fn: Callable[[str], str | None], curves: CurveSet,
                 *, prm: RewardModel | None = None, bins: DifficultyBins | None = None,
                 gains: Mapping[str, AdaptationGain] | None = None, config: PipelineConfig = PipelineConfig(),
                 adapt_max_steps: Mapping[str, int] | None = None):
        if not isinstance(policy, HybridLM):
            raise ValueError(f"policy is a {type(policy).__name__}; expected a ttc_jax.nn.HybridLM")
        if prm is not None:
            if not isinstance(prm, RewardModel) or prm.kind != "prm":
                raise ValueError(f"prm is {type(prm).__name__}{'' if not isinstance(prm, RewardModel) else ' kind=' + prm.kind}; "
                                 "expected a ttc_jax.nn.prm.RewardModel of kind 'prm'")
            prm.check_policy(policy.cfg, codec.sep)
        if bins is not None and set(bins.names) != set(curves.bins):
            raise ValueError(f"bins {list(bins.names)} do not match the curves' bins {list(curves.bins)}")
        if gains is not None and not set(gains) <= set(curves.bins):
            raise ValueError(f"gains has bins {sorted(gains)}; expected some of the curves' bins {list(curves.bins)}")
        self.policy, self.codec, self.answer_fn, self.curves = policy, codec, answer_fn, curves
        self.prm, self.bins, self.gains, self.config = prm, bins, dict(gains or {}), config
        self.scorer = RewardScorer(prm, codec) if prm is not None else None
        self.expected_steps: int | None = None  # set by calibrate
        # per bin: the most adaptation steps the gain was fitted on (the fitted family cannot fall)
        self.adapt_max_steps = {b: min(int(v), config.max_adapt_steps) for b, v in (adapt_max_steps or {}).items()}

    # -- costs of the computations `solve` runs (upper bounds: every sample at full length) ----------

    def _layout(self, prompt: str) -> np.ndarray:
        return self.codec.right_aligned([self.codec.encode(prompt)])

    def _prm_len(self, prompt: str, steps: int | None = None) -> int:
        M = self.config.max_new_tokens if steps is None else steps
        return -(-(len(self.codec.encode(prompt)) + M + 1) // 16) * 16

    def sample_cost(self, prompt: str, rows: int, *, copies: bool = False, steps: int | None = None) -> float:
        """Prefill (once, or once per row for adapted copies) + decoding `rows` samples."""
        Lp, M = self._layout(prompt).shape[1], self.config.max_new_tokens
        pre = LG.prefill_cost(self.policy.cfg, rows=rows if copies else 1, prompt_len=Lp, cache_size=Lp + M)
        return pre + LG.decode_cost(self.policy.cfg, rows=rows, steps=M if steps is None else steps, start=Lp,
                                    cache_size=Lp + M)

    def score_cost(self, prompt: str, rows: int, steps: int | None = None) -> float:
        if self.prm is None:
            return 0.0
        return LG.prm_cost(self.prm.cfg, rows=rows, length=self._prm_len(prompt, steps))

    def probe_cost(self, prompt: str, steps: int | None = None) -> float:
        k = self.config.probe_n
        return self.sample_cost(prompt, k, steps=steps) + self.score_cost(prompt, k, steps)

    def pool_cost(self, prompt: str, strategy: str, n: int, steps: int | None = None) -> float:
        """FLOPs of the whole query for a pool of n candidates (the probes included and reused, one prefill
        shared by all samples), with every sample at full length (steps None: an upper bound) or `steps`
        decoding steps per call. Affine in n for n >= probe_n."""
        k = self.config.probe_n
        extra = max(0, n - k)
        c = self.sample_cost(prompt, k + extra, steps=steps) + self.score_cost(prompt, k, steps)
        if extra and needs_prm(strategy):
            c += self.score_cost(prompt, extra, steps)
        return c

    # -- execution --------------------------------------------------------------------------------

    def plan_average(self, average_budget: float, prompt: str) -> Plan:
        """Per-bin (rule, N) spending `average_budget` FLOPs per query on average over the curves' bin shares
        (`ttc_jax.scaling.planner.plan_budget` on this pipeline's own costs for a prompt like `prompt`: the
        probe always paid, its samples reused, N >= probe_n; decoding `expected_steps` steps per call, as
        measured by `calibrate`, else max_new_tokens). Pass it to `solve(..., plan=...)`: each bin gets the
        share of the average that buys the most accuracy by the curves."""
        k = self.config.probe_n
        strategies = {}
        for name, strat in self.curves.strategies.items():
            if name not in EXECUTABLE or (needs_prm(name) and self.prm is None):
                continue
            steps = self.expected_steps
            per = (self.pool_cost(prompt, name, k + 2, steps) - self.pool_cost(prompt, name, k + 1, steps))
            fixed = self.pool_cost(prompt, name, k + 1, steps) - (k + 1) * per
            curves = {}
            for b, c in strat.curves.items():
                pts = [(n, a) for n, a in zip(c.n, c.accuracy) if n >= k]
                if not pts:
                    break
                curves[b] = Curve(tuple(n for n, _ in pts), tuple(a for _, a in pts), c.num_questions)
            else:
                strategies[name] = Strategy(name, AffineCost(fixed, per), curves)
        if not strategies:
            raise ValueError(f"no executable strategy has curve points at N >= probe_n={k}")
        return plan_budget(CurveSet(self.curves.bins, strategies), _budget(average_budget))

    def _prefill(self, prompt: str, ledger: LG.FlopLedger, phase: str, model=None):
        """The prompt's decoding state (cache for prompt + max_new_tokens), shared by every later sample."""
        x = self._layout(prompt)
        cache = x.shape[1] + self.config.max_new_tokens
        state = prefill_prompts(self.policy if model is None else model, x, cache_size=cache)
        self._log_prefill(ledger, phase, rows=1, prompt_len=x.shape[1])
        return state

    def _log_prefill(self, ledger, phase, *, rows, prompt_len):
        cache = prompt_len + self.config.max_new_tokens
        ledger.add(phase, "prefill", LG.prefill_cost(self.policy.cfg, rows=rows, prompt_len=prompt_len,
                                                     cache_size=cache),
                   rows=rows, prompt_len=prompt_len, cache_size=cache)

    def _sample(self, state, n: int, key, ledger: LG.FlopLedger, phase: str, model=None):
        s = sample(self.policy if model is None else model, n=n, max_new_tokens=self.config.max_new_tokens, rng=key,
                   temperature=self.config.temperature, stop_tokens=(self.codec.eos,), pad_id=self.codec.pad,
                   mesh=None, cache=state)
        self._log_decode(ledger, phase, s, rows=n, prompt_len=int(np.asarray(state.pos)[0]))
        return s

    def _log_decode(self, ledger, phase, s, *, rows, prompt_len):
        steps = int(np.asarray(s.lengths).max())  # the batched loop runs until its longest row stops
        cache = prompt_len + self.config.max_new_tokens
        ledger.add(phase, "decode", LG.decode_cost(self.policy.cfg, rows=rows, steps=steps, start=prompt_len,
                                                   cache_size=cache),
                   rows=rows, steps=steps, start=prompt_len, cache_size=cache)

    def _texts(self, s) -> tuple[list[str], list[bool]]:
        t, f = np.asarray(s.tokens)[0], np.asarray(s.finished)[0]
        return [self.codec.decode(r) for r in t], [bool(v) for v in f]

    def _score(self, prompt: str, s, ledger: LG.FlopLedger, phase: str) -> np.ndarray:
        """Step scores [n, L] and mask of the samples (PRM), logged. The pool is cut to its longest sample
        first: the PRM reads prompt + that many tokens, not the padded maximum."""
        longest = max(1, int(np.asarray(s.lengths).max()))
        scores, mask = self.scorer.score_pool(np.asarray(s.tokens)[..., :longest], [prompt])
        rows, L = scores.shape[1], scores.shape[2]
        ledger.add(phase, "prm", LG.prm_cost(self.prm.cfg, rows=rows, length=L), rows=rows, length=L)
        return scores[0], mask[0]

    def _difficulty(self, answers, scores, mask) -> float:
        if self.prm is not None:
            return float(np.mean(np.asarray(aggregate(scores, mask, "last"))))
        votes = [a for a in answers if a is not None]
        if not votes:
            return 0.0
        return max(votes.count(a) for a in set(votes)) / len(answers)

    def _probe(self, prompt, key, ledger):
        state = self._prefill(prompt, ledger, "probe")
        s = self._sample(state, self.config.probe_n, key, ledger, "probe")
        texts, fins = self._texts(s)
        answers = [self.answer_fn(t) if f else None for t, f in zip(texts, fins)]
        scores = mask = None
        if self.prm is not None:
            scores, mask = self._score(prompt, s, ledger, "probe")
        return texts, answers, scores, mask, self._difficulty(answers, scores, mask), state

    def difficulty(self, prompt: str, *, key) -> float:
        """The probe's difficulty score of a query (higher = easier)."""
        return self._probe(prompt, key, LG.FlopLedger())[4]

    def calibrate(self, prompts, *, key) -> DifficultyBins:
        """Difficulty bins whose thresholds put the curves' shares of `prompts` (queries like the ones to
        solve, not the evaluation queries) in each bin; also sets `self.bins`."""
        keys = jax.random.split(key, len(prompts))
        scores, steps = [], []
        for p, k in zip(prompts, keys):
            ledger = LG.FlopLedger()
            scores.append(self._probe(p, k, ledger)[4])
            steps.append(next(e.spec["steps"] for e in ledger.entries if e.component == "decode"))
        self.bins = DifficultyBins.calibrate(scores, self.curves.bins)
        # decoding steps a sampling call runs (its longest row), for plan_average's expected costs
        self.expected_steps = max(1, int(np.ceil(np.percentile(steps, 90))))
        return self.bins

    def solve(self, prompt: str, budget: float, *, key, adapt_prefix=None, plan: Plan | None = None) -> Solution:
        """Answer one query within `budget` FLOPs (see the module docstring). adapt_prefix: token ids to
        adapt the policy on (e.g. solved examples of the query's format); used when the query's bin has
        an `AdaptationGain`. plan: from `plan_average`; the bin's planned (rule, N) instead of the best that
        fits `budget` (which stays a cap; math.inf for none)."""
        budget = _budget(budget)
        cfg, k = self.config, self.config.probe_n
        one = self.sample_cost(prompt, 1)
        if budget < one:
            raise ValueError(f"budget={budget:.4g} FLOPs is below the cost of one sample ({one:.4g} FLOPs for this "
                             "prompt); expected at least that")
        if adapt_prefix is not None:
            adapt_prefix = np.asarray(adapt_prefix)
            if adapt_prefix.ndim != 1 or adapt_prefix.shape[0] < 2:
                raise ValueError(f"adapt_prefix has shape {adapt_prefix.shape}; expected >= 2 token ids [T]")
        ledger = LG.FlopLedger()
        k_probe, k_main, k_adapt, k_mix = jax.random.split(key, 4)

        if budget < self.probe_cost(prompt):  # no room to probe: one sample, the prior's best bin rule
            s = self._sample(self._prefill(prompt, ledger, "main"), 1, k_probe, ledger, "main")
            texts, fins = self._texts(s)
            answers = [self.answer_fn(t) if f else None for t, f in zip(texts, fins)]
            choice = Choice("majority", 1, 0, float("nan"), one)
            return self._finish(answers, texts, None, choice, "", float("nan"), ledger)

        # the prompt's prefilled state is shared by the probes and the main phase's samples
        texts, answers, scores, mask, difficulty, state = self._probe(prompt, k_probe, ledger)
        bin_name = self.bins.bin_of(difficulty) if self.bins is not None else next(iter(self.curves.bins))
        have_prm = self.prm is not None
        rest = budget - ledger.total

        gain = self.gains.get(bin_name)
        if adapt_prefix is not None and gain is not None:
            T_a, pc = len(adapt_prefix), self.policy.cfg
            check = LG.adapt_cost(pc, copies=1, steps=0, prefix_len=T_a)
            c1 = LG.adapt_cost(pc, copies=1, steps=1, prefix_len=T_a) - check
            max_steps = self.adapt_max_steps.get(bin_name, cfg.max_adapt_steps)
            per_sample = cfg.adapt_mode == "per_sample"
            # one sample from its own copy (its prefill included), or one more sample of the shared copy
            prefill = self.sample_cost(prompt, 0)
            c0 = self.sample_cost(prompt, 1) + self.score_cost(prompt, 1) - (0.0 if per_sample else prefill)
            fixed = 0.0 if per_sample else prefill + check
            if rest >= c0 + check + fixed:
                if per_sample:
                    n, steps, success = choose_adapted(rest, sample_cost=c0 + check, step_cost=c1, gain=gain,
                                                       max_steps=max_steps)
                else:
                    a = allocate_shared(rest, sample_flops=c0, step_flops=c1, gain=gain, max_steps=max_steps,
                                        fixed_flops=fixed)
                    n, steps, success = a.n, a.steps, a.success
                if steps > 0:
                    rule = rule_at(self.curves, bin_name, n, have_prm=have_prm)
                    cost = n * (c0 + check + steps * c1) if per_sample else fixed + steps * c1 + n * c0
                    choice = Choice(rule, n, steps, success, ledger.total + cost)
                    run = self._run_adapted if per_sample else self._run_shared
                    return run(prompt, adapt_prefix, choice, k_adapt, k_main, ledger, bin_name, difficulty)

        cost = lambda strategy, n: self.pool_cost(prompt, strategy, n)
        choice = None
        if plan is not None:  # the bin's planned option (or its mix, with the planned probability)
            a = {x.bin: x for x in plan.allocations}[bin_name]
            use_mix = a.mix is not None and float(jax.random.uniform(k_mix)) < a.mix_fraction
            o = a.mix if use_mix else a.option
            if cost(o.strategy, o.n) <= budget:
                choice = Choice(o.strategy, o.n, 0, o.accuracy, cost(o.strategy, o.n))
        if choice is None:
            choice = choose_pool(self.curves, bin_name, budget, cost, have_prm=have_prm)
        if choice is None:  # nothing measured fits: select among the probes (already paid for)
            choice = Choice(rule_at(self.curves, bin_name, k, have_prm=have_prm), k, 0, float("nan"), ledger.total)
        if choice.n > k:
            s2 = self._sample(state, choice.n - k, k_main, ledger, "main")
            t2, f2 = self._texts(s2)
            texts, answers = texts + t2, answers + [self.answer_fn(t) if f else None for t, f in zip(t2, f2)]
            if needs_prm(choice.strategy):
                sc2, m2 = self._score(prompt, s2, ledger, "main")
                scores, mask = _cat(scores, sc2), _cat(mask, m2)
        n = choice.n
        agg = None
        if needs_prm(choice.strategy):
            agg = np.asarray(aggregate(scores[:n], mask[:n], AGGREGATION[choice.strategy]))
        return self._finish(answers[:n], texts[:n], agg, choice, bin_name, difficulty, ledger)

    def solve_fixed(self, prompt: str, strategy: str, n: int, *, key) -> Solution:
        """A fixed strategy for comparison: n samples, no probe, no adaptation, the given selection rule; same
        ledger accounting as `solve`."""
        if strategy not in AGGREGATION and strategy != "majority":
            raise ValueError(f"strategy={strategy!r}; expected 'majority' or one of {sorted(AGGREGATION)}")
        if needs_prm(strategy) and self.prm is None:
            raise ValueError(f"strategy={strategy!r} needs a PRM; the pipeline has none")
        ledger = LG.FlopLedger()
        s = self._sample(self._prefill(prompt, ledger, "main"), n, key, ledger, "main")
        texts, fins = self._texts(s)
        answers = [self.answer_fn(t) if f else None for t, f in zip(texts, fins)]
        agg = None
        if needs_prm(strategy):
            scores, mask = self._score(prompt, s, ledger, "main")
            agg = np.asarray(aggregate(scores, mask, AGGREGATION[strategy]))
        choice = Choice(strategy, n, 0, float("nan"), ledger.total)
        return self._finish(answers, texts, agg, choice, "", float("nan"), ledger)

    def _run_shared(self, prompt, prefix, choice, k_adapt, k_main, ledger, bin_name, difficulty) -> Solution:
        """One copy adapted `choice.steps` steps on the prefix; all N samples from it."""
        cfg = self.config
        r = ttt_adapt(self.policy, prefix, steps=choice.steps, lr=cfg.adapt_lr, scope=cfg.adapt_scope,
                      optimizer=cfg.adapt_optimizer, key=k_adapt)
        ledger.add("adapt", "adaptation", LG.adapt_cost(self.policy.cfg, copies=1, steps=choice.steps,
                                                        prefix_len=len(prefix)),
                   copies=1, steps=choice.steps, prefix_len=len(prefix))
        model = r.model
        s = self._sample(self._prefill(prompt, ledger, "main", model), choice.n, k_main, ledger, "main", model)
        return self._select_samples(prompt, s, choice, ledger, bin_name, difficulty)

    def _select_samples(self, prompt, s, choice, ledger, bin_name, difficulty) -> Solution:
        texts, fins = self._texts(s)
        answers = [self.answer_fn(t) if f else None for t, f in zip(texts, fins)]
        agg = None
        if needs_prm(choice.strategy):
            scores, mask = self._score(prompt, s, ledger, "main")
            agg = np.asarray(aggregate(scores, mask, AGGREGATION[choice.strategy]))
        return self._finish(answers, texts, agg, choice, bin_name, difficulty, ledger)

    def _run_adapted(self, prompt, prefix, choice, k_adapt, k_main, ledger, bin_name, difficulty) -> Solution:
        """A copy per sample (`ttt_adapt_many`, own keys), sampled in one call (`sample_adapted`)."""
        cfg = self.config
        many = ttt_adapt_many(self.policy, prefix, n=choice.n, steps=choice.steps, lr=cfg.adapt_lr,
                              scope=cfg.adapt_scope, optimizer=cfg.adapt_optimizer, key=k_adapt, order="random")
        ledger.add("adapt", "adaptation", LG.adapt_cost(self.policy.cfg, copies=choice.n, steps=choice.steps,
                                                        prefix_len=len(prefix)),
                   copies=choice.n, steps=choice.steps, prefix_len=len(prefix))
        x = self._layout(prompt)
        s = sample_adapted(many, x, max_new_tokens=cfg.max_new_tokens, rng=k_main, temperature=cfg.temperature,
                           stop_tokens=(self.codec.eos,), pad_id=self.codec.pad)
        self._log_prefill(ledger, "main", rows=choice.n, prompt_len=x.shape[1])
        self._log_decode(ledger, "main", s, rows=choice.n, prompt_len=x.shape[1])
        return self._select_samples(prompt, s, choice, ledger, bin_name, difficulty)

    def _finish(self, answers, texts, agg, choice, bin_name, difficulty, ledger) -> Solution:
        if choice.strategy == "majority":
            sel = SEL.majority(answers)
        elif choice.strategy == "weighted_best_of_n_prm":
            sel = SEL.weighted_best_of_n(answers, agg)
        else:
            sel = SEL.best_of_n(answers, agg)
        completion = texts[sel.index] if sel.index >= 0 else ""
        return Solution(sel.answer, completion, bin_name, difficulty, choice, texts, answers, ledger)


def _cat(a, b):
    """Concatenate step-score arrays [n, L] of two pools, padding the shorter length (mask False)."""
    L = max(a.shape[1], b.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, L - x.shape[1])))
    return np.concatenate([pad(a), pad(b)], 0)


def _budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.floating, np.integer)) \
            or math.isnan(budget) or budget <= 0:
        raise ValueError(f"budget={budget!r}; expected a number of FLOPs > 0 (math.inf: no cap)")
    return float(budget)
