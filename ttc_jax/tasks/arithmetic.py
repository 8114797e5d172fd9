"""Multi-step arithmetic with one step per line: a verifiable task for best-of-N and PRM search.

A problem is a left-to-right chain of terms joined by '+' (multi-digit addends) and '*'
(one-digit multipliers), e.g. ``Q:347+52*3+918`` ; its solution writes the running value one
step per line and ends with an end-of-sequence byte::

    Q:347+52*3+918\\n          <- prompt
    347+52=399\\n              <- step 1
    399*3=1197\\n              <- step 2
    1197+918=2115\\n           <- step 3 (its result is the final answer)
    <EOS>

Text is bytes (vocabulary 256, the tiny presets): `encode` / `decode` map str <-> byte ids, the
step separator is '\\n' (`SEP`), the end of a completion is byte 0 (`EOS`), byte 1 (`PAD`) pads
on the left. Difficulty = (number of terms, digits per addend), see `LEVELS`.

Verifiers are plain callables (prompt, completion) -> bool, so other tasks plug in. Step labels
for PRM training come either exact (`exact_step_labels`: a step is good while every step so far
is right) or Monte-Carlo (`mc_step_labels`: the fraction of rollouts from the prefix that reach
the right answer, as in Math-Shepherd). `load_step_jsonl` reads user step-labelled data.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable, Iterable, Sequence

import numpy as np

SEP = ord("\n")
EOS = 0
PAD = 1
VOCAB_SIZE = 256

Verifier = Callable[[str, str], bool]


@dataclasses.dataclass(frozen=True)
class Level:
    """Difficulty: `terms` numbers, addends of `digits` digits, each later op '*' with prob `p_mul`."""

    terms: int
    digits: int
    p_mul: float = 0.25

    def __post_init__(self):
        if self.terms < 2 or self.digits < 1 or not 0 <= self.p_mul <= 1:
            raise ValueError(f"Level(terms={self.terms}, digits={self.digits}, p_mul={self.p_mul}); "
                             "expected terms >= 2, digits >= 1, 0 <= p_mul <= 1")


LEVELS: dict[str, Level] = {
    "easy": Level(terms=3, digits=1),
    "medium": Level(terms=3, digits=2),
    "hard": Level(terms=4, digits=2),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]
    ops: tuple[str, ...]  # len(terms) - 1 entries of '+' / '*'
    level: str = ""

    @property
    def prompt(self) -> str:
        expr = str(self.terms[0]) + "".join(o + str(t) for o, t in zip(self.ops, self.terms[1:]))
        return f"Q:{expr}\n"

    @property
    def steps(self) -> list[str]:
        """The correct solution, one line per step (without the separator)."""
        out, acc = [], self.terms[0]
        for op, t in zip(self.ops, self.terms[1:]):
            new = acc + t if op == "+" else acc * t
            out.append(f"{acc}{op}{t}={new}")
            acc = new
        return out

    @property
    def answer(self) -> int:
        acc = self.terms[0]
        for op, t in zip(self.ops, self.terms[1:]):
            acc = acc + t if op == "+" else acc * t
        return acc

    @property
    def solution(self) -> str:
        return "".join(s + "\n" for s in self.steps)


def sample_problem(rng: np.random.Generator, level: Level | str) -> Problem:
    name = level if isinstance(level, str) else ""
    lv = LEVELS[level] if isinstance(level, str) else level
    lo, hi = (0 if lv.digits == 1 else 10 ** (lv.digits - 1)), 10 ** lv.digits
    terms, ops = [int(rng.integers(max(lo, 1), hi))], []
    for _ in range(lv.terms - 1):
        if rng.random() < lv.p_mul:
            ops.append("*")
            terms.append(int(rng.integers(2, 10)))
        else:
            ops.append("+")
            terms.append(int(rng.integers(max(lo, 1), hi)))
    return Problem(tuple(terms), tuple(ops), name)


def sample_problems(seed: int, level: Level | str, n: int) -> list[Problem]:
    rng = np.random.default_rng(seed)
    return [sample_problem(rng, level) for _ in range(n)]


def parse_prompt(prompt: str) -> Problem:
    m = re.fullmatch(r"Q:(\d+(?:[+*]\d+)+)\n?", prompt)
    if not m:
        raise ValueError(f"prompt={prompt!r}; expected 'Q:<n>(+|*)<n>...'")
    parts = re.split(r"([+*])", m.group(1))
    return Problem(tuple(int(p) for p in parts[0::2]), tuple(parts[1::2]))


# --- text <-> bytes ------------------------------------------------------------

def encode(text: str) -> list[int]:
    return list(text.encode("ascii"))


def decode(ids: Iterable[int]) -> str:
    """Bytes up to (excluding) the first EOS, PAD bytes dropped."""
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i != PAD:
            out.append(i)
    return out.decode("latin-1")


def split_steps(completion: str) -> list[str]:
    """Completed steps (lines ended by the separator); an unterminated tail is not a step."""
    return completion.split("\n")[:-1]


# --- verifiers -----------------------------------------------------------------

_STEP = re.compile(r"(\d+)([+*])(\d+)=(\d+)")


def final_answer(completion: str) -> str | None:
    """The result of the last step line, or None when there is no well-formed step."""
    steps = split_steps(completion)
    if not steps:
        return None
    m = _STEP.fullmatch(steps[-1])
    return m.group(4) if m else None


def normalise_answer(answer: str | None) -> str | None:
    if answer is None:
        return None
    s = answer.strip().lstrip("0")
    return s or ("0" if answer.strip() else None)


def verify_answer(prompt: str, completion: str) -> bool:
    """Exact final-answer verifier: the last step's result equals the true value."""
    a = normalise_answer(final_answer(completion))
    return a is not None and a == str(parse_prompt(prompt).answer)


def step_correct(problem: Problem, steps: Sequence[str]) -> list[bool]:
    """Per step: the line is exactly the reference step at that position (operands, op and result)."""
    ref = problem.steps
    return [i < len(ref) and s == ref[i] for i, s in enumerate(steps)]


def exact_step_labels(prompt: str, completion: str) -> list[float]:
    """1.0 while every step so far is right, 0.0 from the first wrong step on."""
    ok = step_correct(parse_prompt(prompt), split_steps(completion))
    return [float(v) for v in np.cumprod(np.asarray(ok, dtype=bool))] if ok else []


def mc_step_labels(prompt: str, completion: str, rollout: Callable[[str, list[str]], list[str]],
                   verifier: Verifier = verify_answer) -> list[float]:
    """Math-Shepherd labels: per step i, the fraction of `rollout(prompt, [prefix through step i])`
    continuations (full completions from the prefix) that the verifier accepts."""
    steps = split_steps(completion)
    out = []
    for i in range(len(steps)):
        prefix = "".join(s + "\n" for s in steps[: i + 1])
        conts = rollout(prompt, [prefix])
        if not conts:
            raise ValueError("rollout returned no continuations; expected at least one")
        out.append(float(np.mean([verifier(prompt, prefix + c) for c in conts])))
    return out


# --- step-labelled data (JSONL) -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepExample:
    prompt: str
    steps: tuple[str, ...]
    labels: tuple[float, ...]
    outcome: float | None = None  # final-answer correctness (an ORM's label); None: unknown


def load_step_jsonl(path: str) -> list[StepExample]:
    """Lines of {"prompt": str, "steps": [str, ...], "labels": [0/1 or a float in [0, 1], ...]} and an
    optional "outcome" (final-answer correctness, 0/1 or a float in [0, 1])."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if not isinstance(d, dict) or not {"prompt", "steps", "labels"} <= set(d):
                raise ValueError(f"{path}:{lineno}: expected an object with 'prompt', 'steps', 'labels'")
            steps, labels = d["steps"], d["labels"]
            if not isinstance(d["prompt"], str) or not isinstance(steps, list) or not isinstance(labels, list) \
                    or not all(isinstance(s, str) for s in steps):
                raise ValueError(f"{path}:{lineno}: expected prompt: str, steps: [str], labels: [number]")
            if len(steps) != len(labels) or not steps:
                raise ValueError(f"{path}:{lineno}: {len(steps)} steps but {len(labels)} labels; "
                                 "expected equal, non-zero counts")
            labs = []
            for v in labels:
                if isinstance(v, bool):
                    v = float(v)
                if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"{path}:{lineno}: label {v!r}; expected a number in [0, 1]")
                labs.append(float(v))
            if any("\n" in s for s in steps):
                raise ValueError(f"{path}:{lineno}: a step contains the separator '\\n'")
            outcome = d.get("outcome")
            if outcome is not None:
                if isinstance(outcome, bool):
                    outcome = float(outcome)
                if not isinstance(outcome, (int, float)) or not 0.0 <= float(outcome) <= 1.0:
                    raise ValueError(f"{path}:{lineno}: outcome {outcome!r}; expected a number in [0, 1]")
                outcome = float(outcome)
            out.append(StepExample(d["prompt"], tuple(steps), tuple(labs), outcome))
    return out


def save_step_jsonl(path: str, examples: Iterable[StepExample]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            d = {"prompt": e.prompt, "steps": list(e.steps), "labels": list(e.labels)}
            if e.outcome is not None:
                d["outcome"] = e.outcome
            f.write(json.dumps(d) + "\n")


# --- arrays for training --------------------------------------------------------

def lm_batch(texts: Sequence[tuple[str, str]], length: int, rng: np.random.Generator | None = None,
             max_left_pad: int = 0):
    """(tokens [B, length], loss mask [B, length]) for prompt + completion + EOS, left-padded with PAD.

    The mask is 1 where the target (next token) belongs to the completion or its EOS. A random
    extra left pad of up to `max_left_pad` teaches the model to ignore padding.
    """
    B = len(texts)
    toks = np.full((B, length), PAD, np.int32)
    mask = np.zeros((B, length), np.float32)
    for i, (p, c) in enumerate(texts):
        ids = encode(p) + encode(c) + [EOS]
        if len(ids) > length:
            raise ValueError(f"example of {len(ids)} tokens does not fit length={length}")
        room = min(max_left_pad, length - len(ids))
        extra = int(rng.integers(0, room + 1)) if rng is not None and room else 0
        start = length - len(ids) - extra
        toks[i, start:start + len(ids)] = ids
        # position t predicts token t+1: completion targets start at len(prompt)
        mask[i, start + len(encode(p)) - 1: start + len(ids) - 1] = 1.0
    return toks, mask


# --- a text corpus for `ttc train` -----------------------------------------------

def heldout_problems(level: str, n: int, seed: int = 0) -> list[Problem]:
    """The first `n` held-out problems of `level` (seeds below 1000; training streams use seeds >= 1000)."""
    return sample_problems(seed * 100 + list(LEVELS).index(level), level, n)


def heldout_prompts(n: int, seed: int = 0) -> set[str]:
    """Prompts of the first `n` held-out problems per level (as `ttc best-of-n --seed` draws them)."""
    return {q.prompt for lv in LEVELS for q in heldout_problems(lv, n, seed)}


def corpus_texts(n: int, seed: int, weights: dict[str, float], *, exclude: set[str] = frozenset(),
                 max_left_pad: int = 0) -> list[str]:
    """`n` training documents PAD*k + prompt + solution + EOS (k uniform in [0, max_left_pad]), levels drawn
    with probabilities `weights`; prompts in `exclude` (e.g. `heldout_prompts`) are never written.

    Packed by `ttc data prepare` / `ttc train`, the pads teach the model the left-padded layout of sampling.
    """
    if seed < 1000:
        raise ValueError(f"seed={seed}; training seeds must be >= 1000 (held-out problems use seeds < 1000)")
    bad = [k for k in weights if k not in LEVELS]
    if bad or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"weights={weights!r}; expected non-negative weights over levels {list(LEVELS)}")
    names = list(weights)
    p = np.asarray([weights[k] for k in names], np.float64)
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        q = sample_problem(rng, names[int(rng.choice(len(names), p=p / p.sum()))])
        if q.prompt in exclude:
            continue
        out.append(chr(PAD) * int(rng.integers(0, max_left_pad + 1)) + q.prompt + q.solution + chr(EOS))
    return out


def corrupt_steps(problem: Problem, rng: np.random.Generator) -> list[str]:
    """A wrong solution for PRM training: one random step gets a wrong result, a miscopied operand or the
    other operator (chosen at random); the remaining steps continue correctly from the wrong value."""
    steps, acc = [], problem.terms[0]
    bad = int(rng.integers(len(problem.ops)))
    for i, (op, t) in enumerate(zip(problem.ops, problem.terms[1:])):
        kind = int(rng.integers(4)) if i == bad else -1
        delta = int(rng.choice([-1, 1])) * int(rng.choice([1, 1, 2, 3, 10, int(rng.integers(1, 20))]))
        a = max(0, acc + delta) if kind == 1 else acc
        b = max(0, t + delta) if kind == 2 else t
        o = ("*" if op == "+" else "+") if kind == 3 else op
        new = a + b if o == "+" else a * b
        if kind == 0:
            new = max(0, new + delta)
        if i == bad and f"{a}{o}{b}={new}" == f"{acc}{op}{t}={acc + t if op == '+' else acc * t}":
            new += 1  # the change happened to reproduce the right step
        steps.append(f"{a}{o}{b}={new}")
        acc = new
    return steps
