"""`run_cli` error plumbing (file-system errors, a failing rank of a hand-started 2-process run), atomic
writes that follow the umask, output-folder claims."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
from helpers import REPO, assert_one_line_error, hold_lock

from configs import runtime
from configs.runtime import (
    UserError,
    atomic_write_text,
    check_writable_dir,
    claim_output_dir,
    release_output_dir,
    run_cli,
)


@pytest.mark.parametrize("err, needle", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/PF-WILLOW"),
     "/data/PF-WILLOW: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/results.json"), "No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "Read-only file system"),
])
def test_file_system_errors_are_one_line(err, needle, capsys):
    def main(argv):
        raise err

    with pytest.raises(SystemExit) as stop:
        run_cli(main, [])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and needle in lines[0]


def test_programming_errors_still_raise():
    def main(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        run_cli(main, [])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode


def test_writable_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(UserError, match="not a writable folder"):
        check_writable_dir(tmp_path / "file" / "below")
    assert check_writable_dir(tmp_path / "new" / "deep").is_dir()
    assert not list((tmp_path / "new" / "deep").iterdir())  # the probe file is gone


def test_claim_refuses_a_folder_in_use(tmp_path):
    fd = hold_lock(tmp_path)
    holder = f"pid {os.getppid()} on {socket.gethostname()}"
    with pytest.raises(UserError, match=f"in use by another run \\({holder} holds"):
        claim_output_dir(tmp_path)
    os.close(fd)  # the holder is gone: its .lock file is left behind, stale
    assert claim_output_dir(tmp_path) == tmp_path
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    release_output_dir(tmp_path)
    assert not (tmp_path / ".lock").exists()


def test_without_flock_the_holder_is_judged_by_pid_and_host(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runtime.fcntl, "flock", no_flock)
    here = socket.gethostname()
    for holder, in_use in ((f"{os.getppid()} {here}", True), (f"999999999 {here}", False),
                           (f"{os.getpid()} elsewhere-{here}", True)):
        (tmp_path / ".lock").write_text(holder + "\n")
        if in_use:
            with pytest.raises(UserError, match="in use"):
                claim_output_dir(tmp_path)
        else:
            assert claim_output_dir(tmp_path) == tmp_path
            release_output_dir(tmp_path)


TWO_RANKS = """
import sys
from configs.runtime import UserError, barrier, claim_output_dir, init_distributed, run_cli
def main(argv):
    info = init_distributed("cpu")
    if info.rank == 0:
        claim_output_dir(sys.argv[1])  # as test.py's rank 0 does
    barrier(info)  # both connected: rank 1 must not fail while rank 0 still sets up its connections
    if info.rank == 1:
        raise UserError("rank 1: annotation x.json is malformed")
    barrier(info)
run_cli(main)
"""


def test_hand_started_two_process_run_where_one_rank_fails(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-c", TWO_RANKS, str(tmp_path / "out")], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert_one_line_error(proc.returncode, err)
    assert "annotation x.json is malformed" in results[1][1]
    assert "another process failed" in results[0][1]
    assert not (tmp_path / "out").exists()  # rank 0's lock (and the empty folder it created) are gone
