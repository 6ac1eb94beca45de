"""Runtime plumbing: user errors, device choice, seeding, torchrun init, atomic writes, run metadata."""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from configs import REPO_ROOT


class UserError(Exception):
    """A problem with the user's input (data, config, checkpoint, flags).

    Entry points wrapped by `run_cli` print it as one line, `error: <message>`, and exit with
    status 2, without a traceback. The message should name the file (and row/key) and the fix.
    """


# errors of the file system that are the user's to fix (full disk, permissions, a file in a folder's place)
USER_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                            errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG})


def os_error_message(err: OSError) -> str:
    """One line for a file-system error: what failed, on which path."""
    where = f" {err.filename}" if err.filename else ""
    return f"cannot write or read{where}: {err.strerror or err}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; turn `UserError` (and disk-full or permission errors) into one line on stderr
    and exit status 2."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in USER_OS_ERRNOS:
            raise
        print(f"error: {_one_line(os_error_message(err))}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:
        if not in_distributed_run():
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"error: rank {dist.get_rank()}: the distributed run stopped, probably because another process "
              f"failed (see its message): {_one_line(first)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup_distributed()
    sys.exit(int(code or 0))


# ----------------------------------------------------------------------------------------- device
def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a `UserError`."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} requested but no CUDA device is available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from err


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


NATIVE_BF16_CPU = (("amx_bf16", "amx"), ("avx512_bf16", "avx512_bf16"))  # (torch capability, path name)


def cpu_capabilities() -> dict[str, Any]:
    """The CPU features torch reports (`torch.cpu.get_capabilities`, cpuinfo); older torch: its two probes."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        return dict(probe())
    old = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return {key: bool(getattr(torch.cpu, fn, lambda: False)()) for key, fn in old.items()}


def native_bf16(device: torch.device) -> str | None:
    """How `device` runs bfloat16 convolutions natively: "cuda", "amx" or "avx512_bf16" (oneDNN's bf16
    kernels, from the capabilities torch reports, not the CPU's brand); None where bf16 is emulated, which
    is slower than float32 (a ResNet 1.2-1.7x on AVX-512 without bf16 instructions)."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    caps = cpu_capabilities()
    return next((name for key, name in NATIVE_BF16_CPU if caps.get(key)), None)


def set_faithful_numerics(device: torch.device, fast: bool = False) -> dict[str, Any]:
    """Full float32 (no TF32 on CUDA) unless `fast`; returns a record for results files. (The evaluation
    matcher adds its bf16 backbone and network layout to the record itself: `Matcher.numerics`.)"""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
    return {"device": str(device), "precision": "tf32" if (fast and device.type == "cuda") else "float32"}


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on `device` (for honest timings); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process if absent.

    Backend: nccl on CUDA, gloo on CPU. Each rank uses cuda:LOCAL_RANK on GPU machines.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def in_distributed_run() -> bool:
    """Whether this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """All-gather a picklable object; `[obj]` in a single-process run. Ordered by rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def get_logger(name: str, info: DistInfo | None = None) -> logging.Logger:
    """A logger printing INFO on rank 0 only (warnings and errors on every rank)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if info is None or info.is_main else logging.WARNING)
    return logger


# --------------------------------------------------------------------------------- atomic writes
TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the target's folder; rename it onto `path` on success.

    The file gets the permissions an ordinary `open()` would give (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """A copy of `obj` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def strict_json_dumps(obj: Any) -> str:
    """Strict JSON text (no NaN/Infinity: such values become null), indented."""
    return json.dumps(finite_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, strict_json_dumps(obj))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temp file in the same folder, then rename: a crash never leaves half a file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest (`hashlib` algorithm name) of a file, read in 4 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------- output folders
COMPLETE_KEY = "complete"  # results.json carries `"complete": true`, written last


def unique_suffix() -> str:
    """`YYYYmmdd-HHMMSS-xxxxxx`: the time plus a short random suffix, for default output folders."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def check_writable_dir(path: str | os.PathLike, what: str = "--output-dir") -> Path:
    """Create `path` and prove it writable with a probe file; a one-line `UserError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another place")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TMP_SUFFIX, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{what} {path} is not a writable folder ({err.strerror or err})") from None
    return path


def holds_complete_result(path: str | os.PathLike, marker: str = "results.json") -> bool:
    """Whether `path/marker` is a results file that says it is complete."""
    try:
        return json.loads((Path(path) / marker).read_text()).get(COMPLETE_KEY) is True
    except (OSError, ValueError, AttributeError):
        return False


def claim_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "--output-dir",
                     marker: str = "results.json") -> Path:
    """Check an evaluation folder before the work: writable, not holding a complete result (unless
    `overwrite`), and not in use by another run (a `.lock` file created exclusively; removed at exit)."""
    created = not Path(path).exists()
    path = check_writable_dir(path, what)
    if holds_complete_result(path, marker) and not overwrite:
        raise UserError(f"{what} {path} already holds a complete {marker}; choose another folder or pass "
                        f"--overwrite")
    lock = path / ".lock"
    if _lock_holder_alive(lock):
        raise UserError(f"{what} {path} is in use by another run ({lock} names a running process; delete it "
                        f"if no run is writing there)")
    lock.unlink(missing_ok=True)  # stale: its process is gone
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise UserError(f"{what} {path} is in use by another run (it took {lock} just now)") from None
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    atexit.register(_release, lock, created)
    return path


def release_output_dir(path: str | os.PathLike) -> None:
    """The run's results are complete: remove its lock from the folder now."""
    (Path(path) / ".lock").unlink(missing_ok=True)


def _release(lock: Path, created: bool) -> None:
    """At exit: remove the lock, and the folder too when this run created it and wrote nothing there."""
    lock.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            lock.parent.rmdir()  # only succeeds when empty


def _lock_holder_alive(lock: Path) -> bool:
    """Whether `lock` names another process that is still running."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------- run metadata
def git_sha(short: bool = False) -> str | None:
    """The repository's HEAD commit (with '-dirty' if the tree has changes), or None outside git."""
    try:
        args = ["git", "rev-parse", "--short" if short else "--verify", "HEAD"]
        sha = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that change numbers."""
    import torchvision

    versions = {"python": platform.python_version(), "torch": str(torch.__version__),
                "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["gpu"] = torch.cuda.get_device_name(0)
    return versions


def write_run_metadata(out_dir: str | os.PathLike, config: dict[str, Any],
                       name: str = "config.yaml") -> Path:
    """Write the resolved config plus git commit and package versions to `out_dir/name` (atomic)."""
    record = {"config": config, "git_sha": git_sha(), "versions": package_versions(),
              "command": " ".join(sys.argv)}
    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))
    return path
