"""Plots of a best-of-N results dict: accuracy vs N per level, score histograms, reliability diagram."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw_accuracy(ax, level: dict, title: str) -> None:
    """One level's accuracy against N per strategy on `ax` (a results dict's results["levels"][lv])."""
    for name, d in level["accuracy"].items():
        ns = sorted(int(n) for n in d)
        style = "--" if name == "oracle" else ("-s" if name in ("beam_search", "dvts") else "-o")
        ax.plot(ns, [d[str(n)] for n in ns], style, label=name, ms=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples / beams)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} ({level['num_problems']} problems)")
    ax.grid(alpha=0.3)


def accuracy_vs_n(results: dict, path: str) -> None:
    levels = list(results["levels"])
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        draw_accuracy(ax, results["levels"][lv], lv)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnostics(results: dict, path: str, how: str = "last") -> None:
    levels = list(results["levels"])
    fig, axes = plt.subplots(2, len(levels), figsize=(5 * len(levels), 8), squeeze=False)
    for j, lv in enumerate(levels):
        dg = results["levels"][lv]["diagnostics"]
        h = dg.get(f"hist_{how}")
        ax = axes[0][j]
        if h:
            edges = h["correct"]["edges"]
            mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
            w = (edges[1] - edges[0]) * 0.45
            ax.bar([m - w / 2 for m in mids], h["correct"]["counts"], width=w, label="correct")
            ax.bar([m + w / 2 for m in mids], h["incorrect"]["counts"], width=w, label="incorrect")
            ax.set_yscale("symlog")
            ax.legend(fontsize=7)
        ax.set_title(f"{lv}: PRM score ({how}) of candidates")
        ax = axes[1][j]
        cal = dg.get("calibration")
        if cal:
            pts = [(p, l) for p, l in zip(cal["mean_pred"], cal["mean_label"]) if p is not None]
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.plot([p for p, _ in pts], [l for _, l in pts], "-o", ms=3)
            ax.set_title(f"{lv}: PRM step calibration (ECE {cal['ece']:.3f})")
            ax.set_xlabel("predicted step score")
            ax.set_ylabel("fraction of steps correct")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(results: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "accuracy_vs_n.png"), os.path.join(out_dir, "diagnostics.png")]
    accuracy_vs_n(results, paths[0])
    diagnostics(results, paths[1])
    return paths
