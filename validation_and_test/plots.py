"""Benchmark figures from results.json records: `pck_curve.png` (PCK against alpha, one curve per run) and
`per_class.png` (a bar per class at the headline alpha, plus SPair's difficulty breakdown when present).

Runs without a `pck_curve` entry (older results) are drawn as markers at their evaluated alphas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from validation_and_test.visualize import pyplot, save_figure


def headline_alpha(results: dict[str, Any]) -> str:
    """The evaluated alpha key closest to 0.1 (e.g. '0.1')."""
    return min(results["pck"], key=lambda a: abs(float(a) - 0.1))


def run_label(results: dict[str, Any], fallback: str = "") -> str:
    """'<fallback or dataset>: <backbone> (<weights>)'."""
    weights = (results.get("weights") or {}).get("weights", "?")
    name = Path(str(weights)).name if "/" in str(weights) else weights
    return f"{fallback or results.get('dataset', '?')}: {results.get('backbone', '?')} ({name})"


def plot_pck_curves(runs: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """One curve per (label, results) run: PCK (%) against alpha from 0 to 0.2."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for i, (label, results) in enumerate(runs):
        colour = f"C{i % 10}"
        curve = results.get("pck_curve")
        if curve:
            ax.plot(curve["alphas"], curve["pck"], "-", color=colour, lw=1.8, label=label)
        points = [(float(a), v) for a, v in results["pck"].items() if v is not None]
        ax.plot(*zip(*points), "o", color=colour, ms=4, label=None if curve else label)
    ax.set_xlim(0, 0.2)
    ax.set_ylim(0, 100)
    ax.set_xlabel("alpha (PCK threshold / reference length)")
    ax.set_ylabel("PCK (%), mean over pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_class(results: dict[str, Any], path: str | Path) -> Path:
    """Bars of per-class PCK at the headline alpha (the overall value dashed); a second panel of grouped
    bars per SPair difficulty factor and level when `per_difficulty` is present."""
    plt = pyplot()
    alpha = headline_alpha(results)
    classes = {c: v.get(alpha) for c, v in results.get("per_class", {}).items()}
    difficulty = results.get("per_difficulty") or {}
    panels = 2 if difficulty else 1
    width = max(6.0, 0.35 * len(classes) + 2)
    fig, axes = plt.subplots(1, panels, figsize=(width + 5 * (panels - 1), 4.2), dpi=110, squeeze=False)
    ax = axes[0][0]
    names = list(classes)
    ax.bar(range(len(names)), [classes[c] or 0.0 for c in names], color="C0")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    overall = results["pck"].get(alpha)
    if overall is not None:
        ax.axhline(overall, color="C3", ls="--", lw=1.2, label=f"all pairs {overall:.1f}")
        ax.legend(fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"PCK@{alpha} (%)")
    ax.set_title(f"{results.get('dataset', '')} {results.get('split', '')}: per class", fontsize=9)
    if difficulty:
        ax = axes[0][1]
        x = 0
        ticks, labels = [], []
        for f, (factor, levels) in enumerate(difficulty.items()):
            for level, values in levels.items():
                ax.bar(x, values.get(alpha) or 0.0, color=f"C{f}")
                ticks.append(x)
                labels.append(f"{factor.split('_')[0]}={level}")
                x += 1
            x += 1
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title("SPair difficulty", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_eval_plots(out_dir: str | Path, results: dict[str, Any]) -> list[Path]:
    """`pck_curve.png` and `per_class.png` of one evaluation into `out_dir`."""
    out_dir = Path(out_dir)
    return [plot_pck_curves([(run_label(results), results)], out_dir / "pck_curve.png"),
            plot_per_class(results, out_dir / "per_class.png")]
