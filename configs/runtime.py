"""Runtime plumbing: user errors, device choice, seeding, torchrun init, atomic writes, run metadata."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
    and exit status 2. SIGTERM (torchrun stopping the other processes when one fails) exits through Python,
    so that exit handlers run and folder locks are removed."""
    previous = _exit_on_sigterm()
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(int(code or 0))


def _exit_on_sigterm() -> Any:
    """SIGTERM raises SystemExit(143) (main thread, default handler only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


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


def file_digests(path: str | os.PathLike, algos: Sequence[str] = ("sha256", "md5")) -> dict[str, str]:
    """Hex digests ({`hashlib` algorithm name: digest}) of a file, all from one read in 4 MiB chunks."""
    hashes = {algo: hashlib.new(algo) for algo in algos}
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            for h in hashes.values():
                h.update(block)
    return {algo: h.hexdigest() for algo, h in hashes.items()}


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest (`hashlib` algorithm name) of a file."""
    return file_digests(path, (algo,))[algo]


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


LOCK_FILE = ".lock"


class FolderLock:
    """`<folder>/.lock`, held while a run writes into the folder: an exclusive `flock` on an open descriptor.

    The operating system drops the lock when the process ends, however it ends (kill -9, a failed torchrun
    rank), so a `.lock` file left behind is stale and the next run takes it over; the file names its holder
    (pid and host) for the message. Where the file system has no `flock`, the holder is judged by pid and
    host instead (a process on another host counts as alive)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.fd = path, None
        for _ in range(5):  # its releasing holder may remove the file between our open and our lock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"{what} {path.parent} is in use by another run ({self.holder()} holds "
                                f"{path}); wait for it to finish or choose another folder") from None
            except OSError:  # no flock on this file system
                if _holder_alive(self.holder()):
                    os.close(fd)
                    raise UserError(f"{what} {path.parent} is in use by another run ({self.holder()} named "
                                    f"in {path}; delete it if no run is writing there)") from None
            self.fd = fd
            if self.is_current():
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return
            os.close(fd)
            self.fd = None
        raise UserError(f"{what} {path.parent}: could not take {path} (another run keeps replacing it)")

    def holder(self) -> str:
        """'pid N on host H', as the lock file names its holder."""
        try:
            pid, host = (self.path.read_text().split() + ["?", "?"])[:2]
        except OSError:
            return "another process"
        return f"pid {pid} on {host}"

    def is_current(self) -> bool:
        """Whether our descriptor is still the file at `path` (not one removed or replaced meanwhile)."""
        try:
            return self.fd is not None and os.fstat(self.fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self, folder: str | os.PathLike | None = None) -> None:
        """Remove the lock file (`folder/.lock` when the folder has been moved) and drop the lock."""
        if self.fd is None:
            return
        path = Path(folder) / LOCK_FILE if folder is not None else self.path
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(path).st_ino:
                path.unlink()
        os.close(self.fd)
        self.fd = None
        if _HELD.get(self.path) is self:
            del _HELD[self.path]


_HELD: dict[Path, FolderLock] = {}  # this process's locks, by lock path


def _holder_alive(holder: str) -> bool:
    """Without flock: whether 'pid N on host H' names a live process other than this one."""
    parts = holder.split()
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    pid, host = int(parts[1]), parts[3]
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_folder(folder: str | os.PathLike, what: str = "--output-dir") -> FolderLock:
    """Take `folder/.lock` (`FolderLock`): a one-line `UserError` while another live process holds it.
    Released by `release_output_dir` or at exit; a process may take its own lock again."""
    path = Path(folder) / LOCK_FILE
    mine = _HELD.get(path)
    if mine is not None and mine.is_current():
        return mine
    lock = _HELD[path] = FolderLock(path, what)
    atexit.register(lock.release)
    return lock


def release_output_dir(folder: str | os.PathLike) -> None:
    """This process has finished writing into `folder`: remove its lock now."""
    lock = _HELD.get(Path(folder) / LOCK_FILE)
    if lock is not None:
        lock.release()


def claim_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "--output-dir",
                     marker: str = "results.json") -> Path:
    """Check an evaluation folder before the work: writable, not holding a complete result (unless
    `overwrite`), and not in use by another run (`lock_folder`). A folder this run creates and leaves empty
    is removed at exit."""
    created = not Path(path).exists()
    path = check_writable_dir(path, what)
    if created:
        atexit.register(_remove_if_empty, path)  # registered first: runs after the lock's release
    if holds_complete_result(path, marker) and not overwrite:
        raise UserError(f"{what} {path} already holds a complete {marker}; choose another folder or pass "
                        f"--overwrite")
    lock_folder(path, what)
    return path


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only succeeds when empty


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
