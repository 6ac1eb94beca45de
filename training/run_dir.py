"""Run-folder rules of `training/train.py`: nothing lost, nothing mixed.

- A fresh run (no `--resume`) needs an empty or absent folder; `--overwrite` first moves an existing run
  aside to `<folder>.old-<time>-<suffix>`.
- Each run gets a run id (the file `run_id`), recorded in every checkpoint it writes.
- `--resume auto` continues from the newest *valid* checkpoint of this run (readable, our format, the
  run's id, finite weights), whatever the file names claim; with nothing to resume it says it starts fresh.
- Step files numbered past the resumed checkpoint are renamed `*.invalid` (kept, no longer counted).
- On every start: leftover `.tmp` files of interrupted writes are removed, `last.pth` is made equal to the
  newest valid checkpoint, and only the newest `keep_last` step files are kept.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.runtime import (
    TMP_SUFFIX,
    DistInfo,
    UserError,
    atomic_write_bytes,
    atomic_write_text,
    barrier,
    check_writable_dir,
    gather_objects,
    unique_suffix,
)
from models.weights import check_finite_weights, read_checkpoint
from training.checkpoint import FORMAT, LAST, STEP_FILE, prune_step_files, resume_file, step_checkpoints

RUN_ID_FILE = "run_id"


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes, its id, and the checkpoint it resumes from (None: a fresh start)."""

    out_dir: Path
    run_id: str
    resume_path: Path | None


# ------------------------------------------------------------------------------------------ folder
def is_empty_folder(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_run_folder(out_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Read-only checks every process makes alike (so all refuse together): a one-line `UserError`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"run folder {out_dir} is a file, not a folder; choose another --output-dir")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    if not resume and not overwrite and not is_empty_folder(out_dir):
        raise UserError(f"run folder {out_dir} already holds a run; pass --resume auto to continue it, "
                        f"--overwrite to move it aside, or choose another --output-dir")


def move_aside(out_dir: Path, log: logging.Logger) -> None:
    """`--overwrite`: rename an existing, non-empty run folder to `<folder>.old-<time>-<suffix>`."""
    if is_empty_folder(out_dir):
        return
    aside = out_dir.with_name(f"{out_dir.name}.old-{unique_suffix()}")
    out_dir.rename(aside)
    log.warning("--overwrite: the previous run in %s was moved to %s", out_dir, aside)


def remove_temp_files(out_dir: Path) -> None:
    """Delete `.<name>.<random>.tmp` files left by writes that were killed."""
    for folder in (out_dir, out_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(f".*{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)


def read_run_id(out_dir: Path) -> str | None:
    path = out_dir / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


# ------------------------------------------------------------------------------------ checkpoints
def checkpoint_problem(ckpt: dict[str, Any], run_id: str | None, path: Path) -> str | None:
    """Why a loaded checkpoint cannot be resumed from (None when it can)."""
    if ckpt.get("format") != FORMAT or not isinstance(ckpt.get("step"), int):
        return "not a training checkpoint of this project"
    if run_id is not None and ckpt.get("run_id") not in (None, run_id):
        return f"belongs to another run ({ckpt.get('run_id')})"
    try:
        check_finite_weights(ckpt.get("state_dict") or {}, str(path))
    except UserError as err:
        return str(err)
    return None


def load_valid(path: Path, run_id: str | None, log: logging.Logger) -> dict[str, Any] | None:
    """The checkpoint at `path` if it is a valid checkpoint of this run, else None (with a warning)."""
    try:
        ckpt = read_checkpoint(path)
    except UserError as err:
        log.warning("ignoring %s: %s", path, err)
        return None
    problem = checkpoint_problem(ckpt, run_id, path)
    if problem:
        log.warning("ignoring %s: %s", path, problem)
        return None
    return ckpt


def newest_valid_checkpoint(ckpt_dir: Path, run_id: str | None,
                            log: logging.Logger) -> tuple[Path, int] | None:
    """(path, step) of the newest valid checkpoint of this run among `last.pth` and `step_*.pth`."""
    best: tuple[Path, int] | None = None
    last = ckpt_dir / LAST
    if last.is_file() and (ckpt := load_valid(last, run_id, log)) is not None:
        best = (last, int(ckpt["step"]))
    for path in reversed(step_checkpoints(ckpt_dir)):
        ckpt = load_valid(path, run_id, log)
        if ckpt is not None:
            if best is None or int(ckpt["step"]) >= best[1]:
                best = (path, int(ckpt["step"]))
            break
    return best


def reconcile_last(ckpt_dir: Path, newest: Path, log: logging.Logger) -> None:
    """Make `last.pth` a byte copy of `newest` when it is not already that file's content."""
    last = ckpt_dir / LAST
    if newest == last:
        return
    data = newest.read_bytes()
    if last.is_file() and last.stat().st_size == len(data) and last.read_bytes() == data:
        return
    atomic_write_bytes(last, data)
    log.info("%s was stale or missing: rewritten from %s", last, newest.name)


def set_aside_newer(ckpt_dir: Path, step: int, log: logging.Logger) -> None:
    """Rename step files numbered past the resumed `step` (invalid, or another run's) to `*.pth.invalid`,
    so that neither `--resume auto` nor pruning counts them; nothing is deleted."""
    for path in step_checkpoints(ckpt_dir):
        if int(STEP_FILE.match(path.name).group(1)) > step:
            path.rename(path.with_name(path.name + ".invalid"))
            log.warning("%s is not a valid checkpoint of this run: renamed to %s.invalid", path, path.name)


# ------------------------------------------------------------------------------------------ entry
def prepare_run_folder(out_dir: Path, resume: str | None, overwrite: bool, keep_last: int,
                       log: logging.Logger) -> RunFolder:
    """Main process: apply the run-folder rules (module docstring) and choose the checkpoint to resume."""
    if overwrite:
        move_aside(out_dir, log)
    check_writable_dir(out_dir, "run folder")
    remove_temp_files(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    run_id = read_run_id(out_dir) if resume else None
    resume_path: Path | None = None
    if resume == "auto":
        found = newest_valid_checkpoint(ckpt_dir, run_id, log)
        if found is None:
            log.info("--resume auto: no checkpoint to resume in %s, starting a fresh run", ckpt_dir)
        else:
            resume_path = found[0]
            run_id = run_id or read_checkpoint(resume_path).get("run_id")  # a folder without its run_id file
            set_aside_newer(ckpt_dir, found[1], log)
            reconcile_last(ckpt_dir, resume_path, log)
            prune_step_files(ckpt_dir, keep_last)
    elif resume:
        resume_path = resume_file(resume)
        ckpt = read_checkpoint(resume_path)
        if (problem := checkpoint_problem(ckpt, None, resume_path)) is not None:
            raise UserError(f"--resume {resume_path}: {problem}; to start from pretrained weights use "
                            f"init.checkpoint=PATH instead")
        run_id = ckpt.get("run_id") or run_id
    if resume_path is None or run_id is None:
        run_id = run_id or secrets.token_hex(8)
        atomic_write_text(out_dir / RUN_ID_FILE, run_id + "\n")
    return RunFolder(out_dir, run_id, resume_path)


def open_run_folder(out_dir: Path, resume: str | None, overwrite: bool, keep_last: int, info: DistInfo,
                    log: logging.Logger) -> RunFolder:
    """Every process: the same read-only checks; the main process prepares the folder and chooses the
    checkpoint; every process then receives the main process's choice (no second search)."""
    check_run_folder(out_dir, resume, overwrite)
    barrier(info)  # every process checks the folder as it was, before the main process changes it
    folder = prepare_run_folder(out_dir, resume, overwrite, keep_last, log) if info.is_main else None
    return gather_objects(folder, info)[0]  # a collective: the others wait for the main process here
