"""Overlay the PCK curves of several evaluations in one plot and print a Markdown table of their numbers.

    python scripts/compare_runs.py runs/eval/pfpascal-a runs/eval/pfpascal-b [--output compare.png]

Each RUN_DIR is a `test.py` output folder with a complete `results.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import COMPLETE_KEY, UserError, run_cli  # noqa: E402


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The complete results.json of an evaluation folder (a one-line `UserError` otherwise)."""
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no results.json (not a test.py output folder?)") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({type(err).__name__})") from None
    if not isinstance(results, dict) or results.get(COMPLETE_KEY) is not True or "pck" not in results:
        raise UserError(f"{path} is not a complete evaluation (no \"complete\": true)")
    return results


def markdown_table(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """| run | dataset | backbone | weights | ids | PCK@alpha ... | (alphas of all runs, '-' where absent)."""
    alphas = sorted({a for _, r in runs for a in r["pck"]}, key=float)
    head = ["run", "dataset", "backbone", "weights", "ids", *(f"PCK@{a}" for a in alphas)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in runs:
        weights = str((r.get("weights") or {}).get("weights", "?"))
        cells = [name, f"{r.get('dataset', '?')} {r.get('split', '')}".strip(), str(r.get("backbone", "?")),
                 Path(weights).name, ",".join(map(str, r.get("hyperpixel", []))),
                 *(f"{r['pck'][a]:.2f}" if r["pck"].get(a) is not None else "-" for a in alphas)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="test.py output folders")
    p.add_argument("--output", default="pck_compare.png", help="the overlay plot (PNG)")
    args = p.parse_args(argv)
    from validation_and_test.plots import plot_pck_curves

    names = [Path(r).resolve().name for r in args.runs]
    runs = [(name, load_run(r)) for name, r in zip(names, args.runs)]
    plot_pck_curves(runs, args.output)
    print(markdown_table(runs))
    print(f"\nplot: {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
