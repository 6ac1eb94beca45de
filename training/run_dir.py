"""Run-folder rules of `training/train.py`: nothing lost, nothing mixed.

- One process trains into a folder at a time: the main process holds `<folder>/.lock`
  (`configs.runtime.lock_folder`, the evaluation folders' lock) from the start to the end of the run.
- A fresh run (no `--resume`) needs an empty or absent folder; `--overwrite` first moves an existing run
  aside to `<folder>.old-<time>-<suffix>` (refused while another process trains there).
- Each run gets a run id (the file `run_id`), recorded in every checkpoint it writes.
- `--resume auto` continues from the newest *valid* checkpoint of this run (readable, our format, the
  run's id, finite weights), whatever the file names claim. A folder without checkpoint files starts a fresh
  run; one whose checkpoint files are all unusable is refused (nothing is changed: `--overwrite` starts over).
- Step files found invalid, and those numbered past the resumed checkpoint, are renamed `*.invalid` (kept, no
  longer resumed from or counted by `keep_last`).
- On every start: leftover `.tmp` files of interrupted writes are removed, `last.pth` is made equal to the
  newest valid checkpoint, and only the newest `keep_last` step files are kept.
"""

from __future__ import annotations

import logging
import re
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
    lock_folder,
    unique_suffix,
)
from models.weights import check_finite_weights, read_checkpoint
from training.checkpoint import FORMAT, LAST, STEP_FILE, prune_step_files, resume_file, step_checkpoints

RUN_ID_FILE = "run_id"
RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


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
    """`--overwrite`: rename an existing, non-empty run folder to `<folder>.old-<time>-<suffix>`, holding its
    lock meanwhile (a one-line `UserError` while another process trains there)."""
    if is_empty_folder(out_dir):
        return
    lock = lock_folder(out_dir, "run folder")
    aside = out_dir.with_name(f"{out_dir.name}.old-{unique_suffix()}")
    out_dir.rename(aside)
    lock.release(aside)
    log.warning("--overwrite: the previous run in %s was moved to %s", out_dir, aside)


def remove_temp_files(out_dir: Path) -> None:
    """Delete `.<name>.<random>.tmp` files left by writes that were killed."""
    for folder in (out_dir, out_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(f".*{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)


def read_run_id(out_dir: Path) -> str | None:
    """The run id in `<folder>/run_id` (None without the file); a one-line `UserError` when it is not one."""
    path = out_dir / RUN_ID_FILE
    if not path.is_file():
        return None
    data = path.read_bytes().strip()
    if not data:
        return None
    text = data.decode("ascii", errors="replace")  # U+FFFD never matches RUN_ID
    if not RUN_ID.fullmatch(text):
        raise UserError(f"{path} is not a run id ({len(data)} bytes, not one word of letters and digits); "
                        f"restore it, or start over with --overwrite instead of --resume")
    return text


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


def load_problem(path: Path, run_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None) when `path` is a valid checkpoint of this run, else (None, why not)."""
    try:
        ckpt = read_checkpoint(path)
    except UserError as err:
        return None, str(err)
    problem = checkpoint_problem(ckpt, run_id, path)
    return (None, f"{path}: {problem}") if problem else (ckpt, None)


@dataclass
class CheckpointSearch:
    """What `--resume auto` found: the newest valid checkpoint (path, step) and the files it rejected."""

    found: tuple[Path, int] | None
    rejected: dict[Path, str]  # file -> why it cannot be resumed from


def newest_valid_checkpoint(ckpt_dir: Path, run_id: str | None) -> CheckpointSearch:
    """The newest valid checkpoint of this run among `last.pth` and `step_*.pth` (step files are read newest
    first, up to the first valid one)."""
    best: tuple[Path, int] | None = None
    rejected: dict[Path, str] = {}
    for path in [ckpt_dir / LAST, *reversed(step_checkpoints(ckpt_dir))]:
        if not path.is_file():
            continue
        ckpt, problem = load_problem(path, run_id)
        if ckpt is None:
            rejected[path] = problem
            continue
        if best is None or int(ckpt["step"]) >= best[1]:
            best = (path, int(ckpt["step"]))
        if path.name != LAST:
            break
    return CheckpointSearch(best, rejected)


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


def set_aside_invalid(ckpt_dir: Path, step: int, rejected: dict[Path, str], log: logging.Logger) -> None:
    """Rename step files found invalid, and those numbered past the resumed `step` (another run's, or never
    checked), to `*.pth.invalid`, so that neither `--resume auto` nor pruning counts them; nothing is
    deleted."""
    for path in step_checkpoints(ckpt_dir):
        if path in rejected or int(STEP_FILE.match(path.name).group(1)) > step:
            path.rename(path.with_name(path.name + ".invalid"))
            log.warning("%s is not a valid checkpoint of this run: renamed to %s.invalid", path, path.name)


def nothing_to_resume(out_dir: Path, rejected: dict[Path, str]) -> UserError:
    """`--resume auto` found checkpoint files but none it may resume from: refuse, naming why."""
    first = next(iter(rejected.values()))
    more = f" (and {len(rejected) - 1} more checkpoint file(s))" if len(rejected) > 1 else ""
    return UserError(f"--resume auto: no checkpoint of this run can be resumed in {out_dir}: {first}{more}; "
                     f"nothing was changed. To start over, run the same command with --overwrite instead of "
                     f"--resume (the folder is moved aside, not deleted)")


# ------------------------------------------------------------------------------------------ entry
def prepare_run_folder(out_dir: Path, resume: str | None, overwrite: bool, keep_last: int,
                       log: logging.Logger) -> RunFolder:
    """Main process: apply the run-folder rules (module docstring) and choose the checkpoint to resume."""
    if overwrite:
        move_aside(out_dir, log)
    check_writable_dir(out_dir, "run folder")
    lock_folder(out_dir, "run folder")  # held until the run ends (trainer) or the process exits
    ckpt_dir = out_dir / "checkpoints"
    run_id = read_run_id(out_dir) if resume else None
    resume_path: Path | None = None
    if resume == "auto":
        search = newest_valid_checkpoint(ckpt_dir, run_id)
        if search.found is None and search.rejected:
            raise nothing_to_resume(out_dir, search.rejected)
        for problem in search.rejected.values():
            log.warning("ignoring %s", problem)
        if search.found is None:
            log.info("--resume auto: no checkpoint file in %s, starting a fresh run", ckpt_dir)
        else:
            resume_path = search.found[0]
            run_id = run_id or read_checkpoint(resume_path).get("run_id")  # a folder without its run_id file
            set_aside_invalid(ckpt_dir, search.found[1], search.rejected, log)
            reconcile_last(ckpt_dir, resume_path, log)
            prune_step_files(ckpt_dir, keep_last)
    elif resume:
        resume_path = resume_file(resume)
        ckpt = read_checkpoint(resume_path)
        if (problem := checkpoint_problem(ckpt, None, resume_path)) is not None:
            raise UserError(f"--resume {resume_path}: {problem}; to start from pretrained weights use "
                            f"init.checkpoint=PATH instead")
        run_id = ckpt.get("run_id") or run_id
    remove_temp_files(out_dir)
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
