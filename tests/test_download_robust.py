"""Downloads refuse what is incomplete or hostile: transfers cut short (a local HTTP server on 127.0.0.1 that
announces more bytes than it sends), truncated pair lists, archive bombs, link chains, corrupt archives; one
failed benchmark does not stop the others; the manifest and the output places are checked."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from data import download as dl

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """/full: the payload; /cut: announces the payload's length, sends 40 % of it; /bad-length: announces
    `Content-Length: abc`, sends 40 %; /pairs-cut: 3 of 9 rows."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's API)
        part = PAYLOAD[: len(PAYLOAD) * 2 // 5]
        routes = {"/full": (PAYLOAD, len(PAYLOAD)), "/cut": (part, len(PAYLOAD)),
                  "/bad-length": (part, "abc"), "/pairs": (PAIRS, len(PAIRS)),
                  "/pairs-cut": (PAIRS[:40], len(PAIRS))}
        body, length = routes.get(self.path, (b"", -1))
        if length == -1:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


PAIRS = b"imageA,imageB\n" + b"".join(f"a{i}.png,b{i}.png\n".encode() for i in range(9))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A local HTTP server (127.0.0.1, random port), stopped at the end of the module."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_complete_transfer_over_http_after_https_fails(server, tmp_path, capsys):
    out = dl.fetch_url(f"{server}/full", tmp_path / "f.bin")
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    printed = capsys.readouterr().out
    assert printed.index("https://127.0.0.1") < printed.index("plain http")


def test_truncated_transfer_is_refused_and_nothing_installed(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="incomplete|connection closed"):
        dl.fetch_url(f"{server}/cut", tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_truncated_checkpoint_is_not_recorded(server, tmp_path, capsys):
    manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["cut"]}},
                "checkpoints": {"cut": {"url": f"{server}/cut"}}}
    assert not dl.download_pretrained("m", tmp_path, manifest)
    assert list(tmp_path.iterdir()) == []
    assert "no candidate could be fetched" in capsys.readouterr().err


def test_malformed_content_length_is_refused_and_nothing_recorded(server, tmp_path, capsys):
    with pytest.raises(dl.DownloadError, match="malformed Content-Length 'abc'"):
        dl.fetch_url(f"{server}/bad-length", tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []
    manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["bad"]}},
                "checkpoints": {"bad": {"url": f"{server}/bad-length"}}}  # unverifiable: no size, no checksum
    assert not dl.download_pretrained("m", tmp_path, manifest)
    assert list(tmp_path.iterdir()) == []  # neither installed nor recorded in fetched.yaml
    assert "malformed Content-Length" in capsys.readouterr().err


def test_failure_messages_name_the_manifest_given(server, tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"targets": {"m": {"file": "m.pth", "candidates": ["cut"]}},
                                    "checkpoints": {"cut": {"url": f"{server}/cut"}}}))
    out = str(tmp_path / "out")
    assert dl.main(["pretrained", "--target", "m", "--out", out, "--manifest", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"download one of the URLs in {path} by hand" in err and "pretrained_models" not in err
    with pytest.raises(dl.UserError, match=f"unknown checkpoint target 'x' in {path}"):
        dl.main(["pretrained", "--target", "x", "--out", out, "--manifest", str(path)])


@pytest.mark.parametrize("file", ["../../x.pth", "/tmp/x.pth", "sub/x.pth", "..", "a\\..\\x.pth"])
def test_manifest_file_outside_out_is_refused(server, tmp_path, file):
    manifest = {"targets": {"m": {"file": file, "candidates": ["full"]}},
                "checkpoints": {"full": {"url": f"{server}/full"}}}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(dl.UserError, match=f"{path}: target 'm' has file .*plain file name"):
        dl.load_manifest(path)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(dl.UserError, match="plain file name"):
        dl.download_pretrained("m", out, manifest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["manifest.yaml"]  # nothing written anywhere


def test_each_file_is_hashed_once(server, tmp_path, monkeypatch):
    reads = []
    real = dl.file_digests

    def counting(path, *args):
        reads.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(dl, "file_digests", counting)
    entry = {"url": f"{server}/full", "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
             "md5_prefix": hashlib.md5(PAYLOAD).hexdigest()[:8]}
    manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["full"]}}, "checkpoints": {"full": entry}}
    assert dl.download_pretrained("m", tmp_path, manifest)  # verified and recorded from one read
    assert reads == ["m.pth.download"]
    assert dl.download_pretrained("m", tmp_path, manifest)  # the re-run's check: one read
    assert reads == ["m.pth.download", "m.pth"]
    archive = _tar(tmp_path / "a.tar.gz", {"A/x.txt": b"hello"})
    assert dl.verify_archive(archive) == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert reads[2:] == ["a.tar.gz"]


def test_unverifiable_checkpoint_is_said_and_a_changed_file_fetched_again(server, tmp_path, capsys):
    manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["full"]}},
                "checkpoints": {"full": {"url": f"{server}/full"}}}
    assert dl.download_pretrained("m", tmp_path, manifest)
    assert "unverifiable" in capsys.readouterr().err
    record = yaml.safe_load((tmp_path / "fetched.yaml").read_text())["m.pth"]
    assert record["verified"] == "unverifiable" and record["size"] == len(PAYLOAD)
    assert dl.download_pretrained("m", tmp_path, manifest)
    assert "already present and verified" in capsys.readouterr().out
    (tmp_path / "m.pth").write_bytes(PAYLOAD[:100])  # damaged after the fact
    assert dl.download_pretrained("m", tmp_path, manifest)
    assert "fetching it again" in capsys.readouterr().err
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_manifest_size_and_checksum_are_verified(server, tmp_path):
    good = {"url": f"{server}/full", "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()}
    for bad in ({"size": len(PAYLOAD) + 1}, {"sha256": "00" * 8}, {"md5_prefix": "0000"}):
        manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["c"]}},
                    "checkpoints": {"c": {**good, **bad}}}
        assert not dl.download_pretrained("m", tmp_path, manifest)
        assert not (tmp_path / "m.pth").exists()
    manifest = {"targets": {"m": {"file": "m.pth", "candidates": ["c"]}}, "checkpoints": {"c": good}}
    assert dl.download_pretrained("m", tmp_path, manifest)
    assert yaml.safe_load((tmp_path / "fetched.yaml").read_text())["m.pth"]["verified"] == "sha256"


def test_truncated_pair_list_is_refused(server, tmp_path):
    target = tmp_path / "test_pairs.csv"
    dl.fetch_pair_list(dl.PairList(f"{server}/pairs", "test_pairs.csv", rows=9), target)
    assert dl.count_rows(target) == 9
    with pytest.raises(dl.DownloadError):
        dl.fetch_pair_list(dl.PairList(f"{server}/pairs-cut", "test_pairs.csv", rows=9), target)
    short = tmp_path / "short.csv"
    server_rows = dl.PairList(f"{server}/pairs", "short.csv", rows=900)  # the file itself is complete
    with pytest.raises(dl.DownloadError, match="9 rows, not the published 900"):
        dl.fetch_pair_list(server_rows, short)
    assert not short.exists()


def test_published_pair_list_row_counts():
    rows = {(name, p.target): p.rows for name, b in dl.BENCHMARKS.items() for p in b.pair_lists}
    assert rows == {("pfpascal", "test_pairs.csv"): 299, ("pfpascal", "val_pairs.csv"): 308,
                    ("pfpascal", "trn_pairs.csv"): 2940, ("pfwillow", "test_pairs.csv"): 900}


# ----------------------------------------------------------------------------------------- archives
def _tar(path: Path, files: dict[str, bytes], links: list[tuple[str, str]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def test_archive_bomb_is_refused_before_extraction(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("T/zeros.bin", bytes(8 << 20))  # 8 MiB of zeros compress to a few KiB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(dl.DownloadError, match="more than the cap"):
        dl.safe_extract(bomb, tmp_path / "d", max_bytes=1 << 20)
    assert list((tmp_path / "d").iterdir()) == []
    ratio = tmp_path / "ratio.zip"  # under the size cap, but 24 MiB from a few KiB
    with zipfile.ZipFile(ratio, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("T/zeros.bin", bytes(24 << 20))
    with pytest.raises(dl.DownloadError, match="compression ratio of [0-9]+ \\(more than 100"):
        dl.safe_extract(ratio, tmp_path / "r")
    assert list((tmp_path / "r").iterdir()) == []
    text = _tar(tmp_path / "text.tar.gz", {"T/a.txt": bytes(1 << 20)})  # highly compressed, but small: fine
    assert dl.safe_extract(text, tmp_path / "t") == ["T"]
    many = _tar(tmp_path / "many.tar.gz", {f"T/{i}.txt": b"x" for i in range(30)})
    with pytest.raises(dl.DownloadError, match="30 members"):
        dl.safe_extract(many, tmp_path / "e", max_members=20)


def test_symlink_chain_is_refused_on_every_python(tmp_path):
    links = [("y", "."), ("z", "y/y/../..")]
    chain = _tar(tmp_path / "chain.tar.gz", {"z/evil.txt": b"escaped"}, links=links)
    with pytest.raises(dl.DownloadError, match="is a link"):
        dl.safe_extract(chain, tmp_path / "d" / "dest")
    assert not (tmp_path / "d" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08\x00broken gzip", b"PK\x03\x04" + b"\x00" * 40,
                                     b"plain text, not an archive"])
def test_corrupt_archives_are_one_line_errors(tmp_path, content):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(content)
    with pytest.raises(dl.DownloadError, match="bad.tar.gz"):
        dl.safe_extract(bad, tmp_path / "d")


def test_one_failed_benchmark_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(name, root, keep_archive=False):
        calls.append(name)
        if name == "pfpascal":
            raise dl.DownloadError("PF-PASCAL.tar.gz: not a usable archive (ReadError)")
        if name == "pfwillow":
            raise PermissionError(13, "Permission denied", str(root / "PF-WILLOW"))
        return True

    monkeypatch.setattr(dl, "download_dataset", fake)
    assert dl.main(["datasets", "--root", str(tmp_path)]) == 1
    assert calls == ["pfpascal", "pfwillow", "spair"]
    err = capsys.readouterr().err
    assert "PF-PASCAL: FAILED" in err and "PF-WILLOW: FAILED" in err


@pytest.mark.parametrize("manifest, needle", [
    ({"targets": {"m": {"file": "m", "candidates": ["gone"]}}, "checkpoints": {}}, "candidate 'gone'"),
    ({"targets": {"m": {"file": "m"}}, "checkpoints": {}}, "'candidates'"),
    ({"targets": [], "checkpoints": {}}, "mappings"),
    ({"targets": {"m": {"file": "m", "candidates": ["c"]}}, "checkpoints": {"c": {"sha256": "ab"}}}, "'url'"),
])
def test_manifest_errors_are_one_line(tmp_path, manifest, needle):
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(dl.UserError, match=needle):
        dl.load_manifest(path)


def test_torchvision_download_passes_the_hash_prefix(tmp_path, monkeypatch):
    from models import weights

    seen = {}

    def fake_download(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, hash_prefix=hash_prefix)
        raise RuntimeError("invalid hash value (stand-in)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("CC_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(weights, "_host_resolves", lambda url, timeout_s: True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(dl.UserError):
        weights.imagenet_state_dict("resnet18")
    assert seen["hash_prefix"] == "f37072fd" and seen["url"].endswith("resnet18-f37072fd.pth")


def test_shipped_manifest_entries_carry_a_size_field():
    manifest = dl.load_manifest()
    assert all("size" in entry for entry in manifest["checkpoints"].values())
    assert shutil.which("bash")
