"""Diagnostics of a candidate pool and its reward scores (pure NumPy).

- score histograms of correct vs incorrect candidates;
- PRM calibration: reliability diagram of step scores against the exact step labels (and ECE);
- best-minus-mean score gap per prompt;
- diversity: distinct answers per prompt, mean pairwise token difference;
- selection accuracy against the verifier: on prompts with both correct and incorrect candidates,
  how often the top-scored candidate is correct;
- AUROC: of step scores against exact step labels, and of candidate scores against correctness.
"""

from __future__ import annotations

import numpy as np

BINS = 10


def histogram(values, bins: int = BINS) -> dict:
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins, range=(0.0, 1.0))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def reliability(pred, label, bins: int = BINS) -> dict:
    """Per equal-width bin of predicted probability: mean prediction, mean label, count; and the ECE."""
    pred, label = np.asarray(pred, np.float64).ravel(), np.asarray(label, np.float64).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"pred has {pred.size} values but label has {label.size}; expected equal counts")
    idx = np.clip((pred * bins).astype(int), 0, bins - 1)
    out = {"mean_pred": [], "mean_label": [], "count": []}
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        c = int(sel.sum())
        out["count"].append(c)
        out["mean_pred"].append(float(pred[sel].mean()) if c else None)
        out["mean_label"].append(float(label[sel].mean()) if c else None)
        if c:
            ece += c / max(pred.size, 1) * abs(pred[sel].mean() - label[sel].mean())
    out["ece"] = float(ece)
    return out


def pairwise_token_difference(tokens) -> float:
    """Mean over candidate pairs of the fraction of positions where their tokens differ; tokens [N, L]."""
    t = np.asarray(tokens)
    n = t.shape[0]
    if n < 2:
        return 0.0
    diff = (t[:, None, :] != t[None, :, :]).mean(-1)
    return float(diff[np.triu_indices(n, 1)].mean())


def selection_accuracy(scores, correct) -> dict:
    """On prompts with mixed candidates: fraction where argmax-score is correct (chance: mean correct)."""
    s, c = np.asarray(scores), np.asarray(correct, bool)
    mixed = c.any(1) & ~c.all(1)
    if not mixed.any():
        return {"mixed_prompts": 0, "accuracy": None, "chance": None}
    top = c[mixed][np.arange(mixed.sum()), s[mixed].argmax(1)]
    return {"mixed_prompts": int(mixed.sum()), "accuracy": float(top.mean()), "chance": float(c[mixed].mean())}


def pool_diagnostics(texts, tokens, answers, correct, agg: dict, step_scores, step_mask, step_labels) -> dict:
    """All diagnostics for one pool [P, N] (see the module docstring); agg: aggregation -> scores [P, N]."""
    correct = np.asarray(correct, bool)
    tokens = np.asarray(tokens)
    out = {
        "distinct_answers": float(np.mean([len({a for a in row if a is not None}) for row in answers])),
        "no_answer_rate": float(np.mean([[a is None for a in row] for row in answers])),
        "pairwise_token_difference": float(np.mean([pairwise_token_difference(t[: min(len(t), 32)])
                                                    for t in tokens])),
    }
    for how, s in agg.items():
        s = np.asarray(s)
        out[f"hist_{how}"] = {"correct": histogram(s[correct]), "incorrect": histogram(s[~correct])}
        out[f"best_minus_mean_{how}"] = float((s.max(1) - s.mean(1)).mean())
        out[f"selection_{how}"] = selection_accuracy(s, correct)
        out[f"auroc_{how}"] = auroc(s, correct)  # candidate score against final-answer correctness
    if step_scores is not None:
        preds, labs = [], []
        P, N = correct.shape
        for p in range(P):
            for n in range(N):
                sc = np.asarray(step_scores[p, n])[np.asarray(step_mask[p, n], bool)]
                lab = step_labels[p][n]
                k = min(len(sc), len(lab))
                preds.extend(sc[:k].tolist())
                labs.extend(lab[:k])
        out["calibration"] = reliability(preds, labs) if preds else None
        out["step_auroc"] = auroc(preds, labs) if preds else None  # step score against the exact step label
    return out


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve of `scores` for binary `labels` (ties count one half); None if one class is absent.

    The probability that a random positive scores above a random negative (Mann-Whitney U).
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel() >= 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} values but labels has {y.size}; expected equal counts")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
