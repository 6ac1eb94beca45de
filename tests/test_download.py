"""Download helpers, offline: dry runs, checksums, safe extraction, Drive -> official fallback, pretrained
candidates. Archives are built by the tests; any network access fails the test."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO
from PIL import Image

import data
from data import download as dl


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "build_opener", refuse)


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 77, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _willow_members(top: str, with_csv: bool) -> dict[str, bytes]:
    members = {f"{top}/{sub}/img_{k}.png": _png() for sub in dl.PFWILLOW_CLASSES for k in range(2)}
    if with_csv:
        members[f"{top}/test_pairs.csv"] = _willow_csv()
    return members


def _willow_csv() -> bytes:
    from data.pfwillow import HEADER

    coords = [str(float(v)) for v in range(40)]
    row = ["PF-dataset/duck(S)/img_0.png", "PF-dataset/duck(S)/img_1.png", *coords]
    return (",".join(HEADER) + "\n" + ",".join(row) + "\n").encode()


def test_dry_run_touches_neither_network_nor_disk(tmp_path, capsys):
    root = tmp_path / "Datasets_SCOT"
    assert dl.main(["datasets", "--dry-run", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for bench in dl.BENCHMARKS.values():
        assert all(i in out for i in bench.drive_ids) and bench.official_url in out
    assert "111tpXshLiJ4qudBHoGK3HbMSNr9vVRq9 -> trn_pairs.csv" in out and "image-net.org" in out
    assert not root.exists()
    assert dl.main(["pretrained", "--dry-run", "--out", str(tmp_path / "pm")]) == 0
    out = capsys.readouterr().out
    assert out.index("vllab1.ucmerced.edu") < out.index("moco_v1_200ep_pretrain.pth.tar")
    assert "b251726a" in out and not (tmp_path / "pm").exists()


def test_shell_script_dry_run(tmp_path):
    cmd = ["bash", str(REPO / "scripts" / "download_datasets.sh"), "--only", "pfwillow", "--dry-run",
           "--root", str(tmp_path / "r")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "1tDP0y8RO5s45L-vqnortRaieiWENQco_" in res.stdout and "SPair" not in res.stdout


def test_dry_run_reports_complete_folder_as_skipped(tmp_path, capsys):
    folder = tmp_path / "PF-WILLOW"
    for sub in dl.PFWILLOW_CLASSES:
        (folder / sub).mkdir(parents=True)
    (folder / "test_pairs.csv").write_text("x")
    assert dl.plan("pfwillow", tmp_path) == [f"PF-WILLOW: already complete in {folder}, skipped"]


def test_verify_archive_checksums_and_html(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {"A/x.txt": b"hello"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    assert dl.verify_archive(archive, sha256=digest) == digest
    assert dl.verify_archive(archive, sha256=digest[:8], md5_prefix=md5[:8]) == digest
    with pytest.raises(dl.DownloadError, match="sha256 .* does not match"):
        dl.verify_archive(archive, sha256="0" * 64)
    with pytest.raises(dl.DownloadError, match="md5 does not start with ffffffff"):
        dl.verify_archive(archive, md5_prefix="ffffffff")
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:-20])
    with pytest.raises(dl.DownloadError, match="not a readable tar/zip archive"):
        dl.verify_archive(truncated)
    html = tmp_path / "drive.tar.gz"
    html.write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses</body></html>")
    with pytest.raises(dl.DownloadError, match="HTML page.*pip install gdown"):
        dl.verify_archive(html)
    zipped = _zip(tmp_path / "z.zip", {"Z/a.txt": b"1"})
    assert dl.verify_archive(zipped) == hashlib.sha256(zipped.read_bytes()).hexdigest()


@pytest.mark.parametrize("build", [
    lambda p: _tar(p / "bad.tar.gz", {"ok/a.txt": b"1", "../evil.txt": b"x"}),
    lambda p: _tar(p / "bad.tar.gz", {"/tmp/abs_evil.txt": b"x"}),
    lambda p: _tar(p / "bad.tar.gz", {"ok/a.txt": b"1"}, links={"ok/link": "../../evil"}),
    lambda p: _tar(p / "bad.tar.gz", {"ok/a.txt": b"1"}, links={"ok/link": "/etc/passwd"}),
    lambda p: _zip(p / "bad.zip", {"ok/a.txt": b"1", "ok/../../evil.txt": b"x"}),
])
def test_safe_extract_rejects_unsafe_members(tmp_path, build):
    archive = build(tmp_path)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(dl.DownloadError, match="rejected"):
        dl.safe_extract(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs_evil.txt").exists()


def test_safe_extract_refuses_even_internal_links(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", {"T/a.txt": b"1"}, links={"T/sub/link": "../a.txt"})
    with pytest.raises(dl.DownloadError, match="is a link"):
        dl.safe_extract(archive, tmp_path / "d")  # the benchmarks have none: links are refused outright
    assert list((tmp_path / "d").iterdir()) == []


def test_drive_tarball_installed_then_skipped(tmp_path, monkeypatch, capsys):
    source = _tar(tmp_path / "src.tar.gz", _willow_members("PF-WILLOW", with_csv=True))
    calls = []

    def fake_drive(file_id, out):
        calls.append(file_id)
        shutil.copy(source, out)
        return Path(out)

    monkeypatch.setattr(dl, "fetch_drive", fake_drive)
    root = tmp_path / "root"
    assert dl.download_dataset("pfwillow", root)
    assert calls == ["1tDP0y8RO5s45L-vqnortRaieiWENQco_"] and not (root / "PF-WILLOW.tar.gz").exists()
    assert sorted(p.name for p in root.iterdir()) == ["PF-WILLOW"]
    ds = data.build_dataset("pfwillow", root=root)
    assert len(ds) == 1 and ds[0]["src_img"].shape == (3, 30, 40)
    assert dl.download_dataset("pfwillow", root) and len(calls) == 1
    assert "already complete" in capsys.readouterr().out


def test_fallback_to_official_archive_and_renamed_pair_list(tmp_path, monkeypatch):
    official = _zip(tmp_path / "PF-dataset.zip", _willow_members("PF-dataset", with_csv=False))
    csv_file = tmp_path / "test_pairs_pf.csv"
    csv_file.write_bytes(_willow_csv())
    html = tmp_path / "page.html"
    html.write_text("<html>quota exceeded</html>")

    def fake_drive(file_id, out):  # Drive answers with its HTML page
        shutil.copy(html, out)
        return Path(out)

    def fake_url(url, out):
        shutil.copy(official if url.endswith(".zip") else csv_file, out)
        return Path(out)

    monkeypatch.setattr(dl, "fetch_drive", fake_drive)
    monkeypatch.setattr(dl, "fetch_url", fake_url)
    monkeypatch.setattr(dl.BENCHMARKS["pfwillow"].pair_lists[0], "rows", 1)  # this stand-in list has 1 pair
    root = tmp_path / "root"
    assert dl.download_dataset("pfwillow", root)
    assert (root / "PF-WILLOW" / "test_pairs.csv").read_bytes() == _willow_csv()
    assert sorted(p.name for p in root.iterdir()) == ["PF-WILLOW"]
    assert len(data.build_dataset("pfwillow", root=root)) == 1


def test_everything_failing_says_what_to_try(tmp_path, monkeypatch, capsys):
    def fail(source, out):
        raise dl.DownloadError(f"could not fetch {source} (offline)")

    monkeypatch.setattr(dl, "fetch_drive", fail)
    monkeypatch.setattr(dl, "fetch_url", fail)
    assert not dl.download_dataset("spair", tmp_path)
    err = capsys.readouterr().err
    assert "SPair-71k: FAILED" in err and "pip install gdown" in err and "JPEGImages" in err


def test_pretrained_first_valid_candidate_recorded(tmp_path, monkeypatch):
    payload = b"fake checkpoint bytes"
    md5 = hashlib.md5(payload).hexdigest()
    manifest = {"targets": {"moco": {"file": "moco.pth.tar", "candidates": ["dead", "corrupt", "good"]}},
                "checkpoints": {"dead": {"url": "http://a/dead"},
                                "corrupt": {"url": "http://b/corrupt", "md5_prefix": "00000000"},
                                "good": {"url": "http://c/good", "md5_prefix": md5[:8]}}}

    def fake_url(url, out):
        if url.endswith("dead"):
            raise dl.DownloadError("could not fetch http://a/dead (404)")
        Path(out).write_bytes(payload)
        return Path(out)

    monkeypatch.setattr(dl, "fetch_url", fake_url)
    assert dl.download_pretrained("moco", tmp_path, manifest)
    assert (tmp_path / "moco.pth.tar").read_bytes() == payload
    record = yaml.safe_load((tmp_path / "fetched.yaml").read_text())["moco.pth.tar"]
    assert record["checkpoint"] == "good" and record["md5"] == md5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fetched.yaml", "moco.pth.tar"]


def test_shipped_manifest_is_consistent():
    manifest = dl.load_manifest()
    for spec in manifest["targets"].values():
        assert all(c in manifest["checkpoints"] for c in spec["candidates"])
    assert manifest["targets"]["moco"]["candidates"] == ["authors_moco", "moco_v1_200ep"]
    assert manifest["checkpoints"]["moco_v1_200ep"]["md5_prefix"] == "b251726a"
