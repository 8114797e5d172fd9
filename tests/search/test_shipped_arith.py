"""The shipped best-of-N models load by name and are trained: the policy solves easy held-out problems
greedily, the PRM scores reference solutions above corrupted ones, the ORM right answers above wrong ones."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ttc_jax
from ttc_jax.checkpoints import checkpoints_dir, known_names
from ttc_jax.search import checkpoint
from ttc_jax.search.lm import Policy, RewardScorer, TextCodec
from ttc_jax.tasks import arithmetic as A

NAMES = ("arith-policy", "arith-prm", "arith-orm")
pytestmark = pytest.mark.skipif(not set(NAMES) <= set(known_names()), reason="arith checkpoints not shipped")
CODEC = TextCodec(A.SEP, A.EOS, A.PAD)


def test_shipped_arith_models_are_small_and_documented():
    for name in NAMES:
        folder = checkpoints_dir() / name
        assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20e6
        card = (folder / "README.md").read_text()
        for needed in ("steps", "Reproduce", "AUROC" if name != "arith-policy" else "validation loss"):
            assert needed in card, (name, needed)
    assert "ttc train --config tiny-transformer" in (checkpoints_dir() / "arith-policy" / "README.md").read_text()
    for kind in ("prm", "orm"):  # trained by ttc train's reward objective, exported by ttc export
        card = (checkpoints_dir() / f"arith-{kind}" / "README.md").read_text()
        assert "ttc train --config arith-policy" in card and f"--objective {kind}" in card, kind
        assert f"ttc export {kind}_run checkpoints/arith-{kind}" in card, kind


def test_policy_solves_easy_heldout_problems_greedily():
    model, cfg = ttc_jax.from_pretrained("arith-policy")
    problems = A.sample_problems(0, "easy", 16)  # held out: excluded from the training corpus
    pol = Policy(model, CODEC, temperature=0.0, max_new_tokens=40)
    texts, _, _ = pol.sample_pool([q.prompt for q in problems], 1, np.random.default_rng(0))
    acc = np.mean([A.verify_answer(q.prompt, row[0]) for q, row in zip(problems, texts)])
    assert acc >= 0.5, acc  # an untrained model scores 0


def test_reward_models_prefer_right_solutions():
    problems = A.sample_problems(1, "medium", 24)
    rng = np.random.default_rng(0)
    right = [q.solution for q in problems]
    wrong = ["".join(s + "\n" for s in A.corrupt_steps(q, rng)) for q in problems]
    prompts = [q.prompt for q in problems] * 2
    for name in ("arith-prm", "arith-orm"):
        rm = checkpoint.load_reward_pretrained(name)
        assert rm.kind == name.split("-")[1] and rm.separator == A.SEP
        last = [s[-1] for s in RewardScorer(rm, CODEC).score_steps(prompts, right + wrong, [True] * 48)]
        assert np.mean(last[:24]) > np.mean(last[24:]) + 0.02, (name, np.mean(last[:24]), np.mean(last[24:]))
