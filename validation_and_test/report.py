"""Evaluation outputs: `per_pair.csv` and the plain-text PCK table printed by `test.py`."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any


def per_pair_csv(rows: list[dict[str, Any]], alphas: Sequence[float]) -> str:
    """Rows `index,src,trg,class,n_kps,pck_<alpha>...` in percent, 4 decimals."""
    keys = [f"pck_{float(a):g}" for a in alphas]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "src", "trg", "class", "n_kps", *keys])
    for r in rows:
        pck = (f"{r[k]:.4f}" for k in keys)
        writer.writerow([r["index"], r["src"], r["trg"], r["class"], r["n_kps"], *pck])
    return buf.getvalue()


def format_table(results: dict[str, Any]) -> str:
    """Plain-text summary: headline per alpha, per-keypoint PCK, per-class PCK at each alpha."""
    alphas = list(results["pck"])

    def row(label: str, values: dict[str, Any]) -> str:
        cells = "".join(f"{values[a]:>10.2f}" if values.get(a) is not None else f"{'-':>10}" for a in alphas)
        return f"{label[:22]:<22}{cells}"

    lines = [f"{results['dataset']} {results['split']}: {results['n_pairs']} pairs, "
             f"thres {results['thres']}, "
             f"{results['backbone']} ({results['weights'].get('weights')}), ids {results['hyperpixel']}",
             f"{'':<22}" + "".join(f"{'PCK@' + a:>10}" for a in alphas),
             row("per pair (headline)", results["pck"]), row("per keypoint", results["pck_per_keypoint"])]
    lines += [row(f"  {cls}", vals) for cls, vals in results.get("per_class", {}).items()]
    for factor, levels in results.get("per_difficulty", {}).items():
        lines += [row(f"  {factor}={level}", vals) for level, vals in levels.items()]
    return "\n".join(lines)
