"""Overlay the PCK curves of several evaluations in one plot and print a Markdown table of their numbers.

    python scripts/compare_runs.py runs/eval/pfpascal-a runs/eval/pfpascal-b [--output compare.png]

Each RUN_DIR is a `test.py` output folder with a complete `results.json`; a malformed one, or an
`--output` that cannot be written, is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import COMPLETE_KEY, UserError, check_writable_dir, run_cli  # noqa: E402


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
    problem = results_problem(results)
    if problem:
        raise UserError(f"{path}: {problem} (not a results.json written by test.py)")
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_alpha(key: Any) -> bool:
    try:
        return math.isfinite(float(key))
    except (TypeError, ValueError):
        return False


def results_problem(results: dict[str, Any]) -> str | None:
    """What in a results.json the table and the plot cannot use (None when all is well): `pck` must map
    alphas to numbers (or null), `weights` be a mapping, `hyperpixel` a list, `pck_curve` two equal lists."""
    pck = results["pck"]
    if not isinstance(pck, dict) or not pck:
        return f"'pck' must map alphas to PCK values, got {type(pck).__name__}"
    for alpha, value in pck.items():
        if not _is_alpha(alpha):
            return f"'pck' key {alpha!r} is not an alpha (a number)"
        if value is not None and not _is_number(value):
            return f"'pck' value of alpha {alpha} is {value!r}, not a number"
    if not isinstance(results.get("weights") or {}, dict):
        return f"'weights' must be a mapping, got {type(results['weights']).__name__}"
    if not isinstance(results.get("hyperpixel") or [], list):
        return f"'hyperpixel' must be a list of ids, got {type(results['hyperpixel']).__name__}"
    curve = results.get("pck_curve")
    if curve:
        xs, ys = (curve.get(k) if isinstance(curve, dict) else None for k in ("alphas", "pck"))
        if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)
                and all(_is_number(v) or v is None for v in [*xs, *ys])):
            return "'pck_curve' must hold two lists of numbers of one length, 'alphas' and 'pck'"
    return None


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
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as {output / 'compare.png'}")
    check_writable_dir(output.parent, "--output folder")
    from validation_and_test.plots import plot_pck_curves

    names = [Path(r).resolve().name for r in args.runs]
    runs = [(name, load_run(r)) for name, r in zip(names, args.runs)]
    plot_pck_curves(runs, args.output)
    print(markdown_table(runs))
    print(f"\nplot: {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
