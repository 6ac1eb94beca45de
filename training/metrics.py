"""Rank-0 training logs: `metrics.jsonl` (the source of truth), TensorBoard events and a tqdm bar.

One JSON object per logged step, fields (`METRIC_FIELDS`, tested): step, epoch, lr, loss, loss_moco,
loss_cycle, moco_top1, moco_top5, data_time and compute_time (seconds per step, averaged over the interval),
images_per_s (ImageNet images per second, all ranks), plus any extra scalars: the training-health fields
(`grad_norm_moco`, `grad_norm_pixel`, `moco_chance_loss`, `cycle_centre_baseline`, ...; docs/method.md).
Other ranks get a no-op logger.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from configs.runtime import DistInfo, atomic_write_text

METRIC_FIELDS = ("step", "epoch", "lr", "loss", "loss_moco", "loss_cycle", "moco_top1", "moco_top5",
                 "data_time", "compute_time", "images_per_s")


class MetricsLogger:
    """Write metrics on rank 0. On resume, lines of `metrics.jsonl` logged after `start_step` (the checkpoint
    being resumed) are dropped, and TensorBoard events after it are purged."""

    def __init__(self, out_dir: str | Path, info: DistInfo, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True) -> None:
        self.enabled = info.is_main
        self.path = Path(out_dir) / "metrics.jsonl"
        self._writer = None
        self._bar = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _step_of(ln) is not None and _step_of(ln) <= start_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is optional
                self._writer = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold 'step'); scalars also go to TensorBoard as train/<name>."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(f"train/{k}", v, clean["step"])
        if self._bar is not None:
            show = {k: clean[k] for k in ("loss", "loss_moco", "loss_cycle", "moco_top1", "lr") if k in clean}
            text = {k: f"{v:.4g}" for k, v in show.items() if isinstance(v, float)}
            self._bar.set_postfix(text, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def add_image(self, tag: str, image_hwc: Any, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse a metrics.jsonl file into a list of dicts."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
