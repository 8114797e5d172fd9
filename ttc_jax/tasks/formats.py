"""Step formats for the arithmetic task: the training format and shifted ones, for measuring adaptation.

A `StepFormat` renders a `Problem` (prompt and one step per line) and parses completions back. The
training format (`CANONICAL`) renders exactly `Problem.prompt` / `Problem.solution`; a shifted format
changes the prompt marker, the spacing around operators and '=', and/or prefixes each step with its
number, e.g. `SHIFTED["spaced"]`::

    Q: 347 + 52 * 3 + 918\\n
    347 + 52 = 399\\n
    399 * 3 = 1197\\n
    1197 + 918 = 2115\\n<EOS>

`to_canonical` maps a completion in a format to the training format (line by line; None when a line
does not parse), so the task's verifiers (`verify_answer`, `exact_step_labels`) apply unchanged.
`verify` is strict: every completed line must parse in the format and the last result must be right.
"""

from __future__ import annotations

import dataclasses
import re

from ttc_jax.tasks.arithmetic import Problem, normalise_answer, split_steps


@dataclasses.dataclass(frozen=True)
class StepFormat:
    """marker: the prompt's prefix; space: written around operators and '='; numbered: steps start with
    "<k><numbered>" (k = 1, 2, ...; "" for none)."""

    name: str
    marker: str = "Q:"
    space: str = ""
    numbered: str = ""

    def __post_init__(self):
        if "\n" in self.marker + self.space + self.numbered or any(c.isdigit() for c in self.numbered + self.space):
            raise ValueError(f"StepFormat {self.name!r}: marker/space/numbered must not contain newlines "
                             "(nor digits in space/numbered)")
        if self.space.strip():
            raise ValueError(f"space={self.space!r}; expected whitespace only")

    def _expr(self, terms, ops) -> str:
        s = self.space
        return str(terms[0]) + "".join(f"{s}{o}{s}{t}" for o, t in zip(ops, terms[1:]))

    def prompt(self, problem: Problem) -> str:
        return f"{self.marker}{self._expr(problem.terms, problem.ops)}\n"

    def step(self, k: int, a: int, op: str, b: int, result: int) -> str:
        s = self.space
        head = f"{k}{self.numbered}" if self.numbered else ""
        return f"{head}{a}{s}{op}{s}{b}{s}={s}{result}"

    def steps(self, problem: Problem) -> list[str]:
        out, acc = [], problem.terms[0]
        for k, (op, t) in enumerate(zip(problem.ops, problem.terms[1:]), 1):
            new = acc + t if op == "+" else acc * t
            out.append(self.step(k, acc, op, t, new))
            acc = new
        return out

    def solution(self, problem: Problem) -> str:
        return "".join(s + "\n" for s in self.steps(problem))

    @property
    def _step_re(self) -> re.Pattern:
        s, head = re.escape(self.space), (r"(\d+)" + re.escape(self.numbered) if self.numbered else "()")
        return re.compile(rf"{head}(\d+){s}([+*]){s}(\d+){s}={s}(\d+)")

    def parse_step(self, k: int, line: str) -> tuple[int, str, int, int] | None:
        """(a, op, b, result) of step k's line, or None when it is not in this format."""
        m = self._step_re.fullmatch(line)
        if not m or (self.numbered and int(m.group(1)) != k):
            return None
        return int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))

    def to_canonical(self, completion: str) -> str | None:
        """The completion's steps in the training format (completed lines only), None if a line does not parse."""
        out = []
        for k, line in enumerate(split_steps(completion), 1):
            p = self.parse_step(k, line)
            if p is None:
                return None
            a, op, b, r = p
            out.append(f"{a}{op}{b}={r}\n")
        return "".join(out)

    def answer(self, completion: str) -> str | None:
        """The last step's result when every completed line parses in this format, else None."""
        c = self.to_canonical(completion)
        if not c:
            return None
        return normalise_answer(c.split("\n")[-2].rsplit("=", 1)[1])

    def verify(self, problem: Problem, completion: str) -> bool:
        """Strict: all completed lines in this format and the last result equal to the problem's answer."""
        return self.answer(completion) == str(problem.answer)


CANONICAL = StepFormat("canonical")
SHIFTED: dict[str, StepFormat] = {
    "spaced": StepFormat("spaced", marker="Q: ", space=" "),
    "numbered": StepFormat("numbered", numbered=") "),
    "colon_numbered": StepFormat("colon_numbered", numbered=":"),
    "marker": StepFormat("marker", marker="A:"),
    "marker_numbered": StepFormat("marker_numbered", marker="A:", numbered=":"),
    "spaced_numbered": StepFormat("spaced_numbered", marker="Problem: ", space=" ", numbered=") "),
}


def lenient_answer(completion: str) -> str | None:
    """The number after the last '=' of the last completed line, whatever the format (a diagnostic)."""
    steps = split_steps(completion)
    if not steps:
        return None
    m = re.search(r"=\s*(\d+)\s*$", steps[-1])
    return normalise_answer(m.group(1)) if m else None
