"""Download helpers behind `scripts/download_datasets.sh` and `scripts/download_pretrained.sh`.

Never imported by loaders, training or evaluation. Benchmarks: the HPF/SCOT Google Drive tarballs
(`gdown` when installed, else the confirm-token flow), falling back to the official archives restructured into
the HPF layout with the pair lists fetched and renamed. Every transfer is written to `<file>.part` and renamed
only when the byte count equals the announced `Content-Length`. Every archive is verified (checksum where
known, else a readable archive that is not an HTML page, said to be unverifiable) and extracted safely (no
absolute paths, `..` members, links or devices; capped in total size and member count). Pair lists are
checked for their published row counts. `--dry-run` prints the plan and touches neither the network nor the
disk. One failed benchmark does not stop the others.
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import re
import shutil
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from configs import REPO_ROOT
from configs.runtime import UserError, atomic_write_text, check_writable_dir, file_digests
from data.pfwillow import PFWILLOW_CLASSES

WILLOW = "http://www.di.ens.fr/willow/research"  # also tried over https first (`transport_candidates`)
MAX_MEMBERS = 500_000  # members per archive (the benchmarks have at most ~140k files)
GIB = 2**30
MAX_RATIO = 100  # extracted bytes per archive byte (the benchmarks, JPEGs and annotations, are below 3)
RATIO_FLOOR = 16 * 2**20  # archives extracting to less than this are never too compressed to accept


@dataclass
class PairList:
    """A pair list fetched separately and renamed: (url or Drive id, file name under the benchmark folder)."""

    source: str
    target: str
    drive: bool = False
    rows: int | None = None  # published number of pairs (data rows after the header); None = unknown


@dataclass
class Benchmark:
    folder: str
    drive_ids: list[str]  # HPF/SCOT tarballs `<folder>.tar.gz` (top folder `<folder>`), newest first
    official_url: str
    official_top: str  # top folder inside the official archive
    pair_lists: list[PairList] = field(default_factory=list)
    required: list[str] = field(default_factory=list)  # relative paths that make the folder complete
    max_extract_bytes: int = 16 * GIB  # cap on an archive's extracted size: a generous multiple of the data


BENCHMARKS: dict[str, Benchmark] = {
    "pfpascal": Benchmark(
        "PF-PASCAL", ["1OOwpGzJnTsFXYh-YffMQ9XKM_Kl_zdzg", "1r54YXfCWGHe523w3ZQnCP0Y1TDToKx8n"],
        f"{WILLOW}/proposalflow/dataset/PF-dataset-PASCAL.zip", "PF-dataset-PASCAL",
        [PairList(f"{WILLOW}/cnngeometric/other_resources/test_pairs_pf_pascal.csv", "test_pairs.csv",
                  rows=299),
         PairList(f"{WILLOW}/cnngeometric/other_resources/val_pairs_pf_pascal.csv", "val_pairs.csv",
                  rows=308),
         PairList("111tpXshLiJ4qudBHoGK3HbMSNr9vVRq9", "trn_pairs.csv", drive=True, rows=2940)],
        ["trn_pairs.csv", "val_pairs.csv", "test_pairs.csv", "JPEGImages", "Annotations"], 4 * GIB),
    "pfwillow": Benchmark(
        "PF-WILLOW", ["1tDP0y8RO5s45L-vqnortRaieiWENQco_", "1Moes_nP-1AGxuG6TkuEl100NaHGWhRfv"],
        f"{WILLOW}/proposalflow/dataset/PF-dataset.zip", "PF-dataset",
        [PairList(f"{WILLOW}/cnngeometric/other_resources/test_pairs_pf.csv", "test_pairs.csv", rows=900)],
        ["test_pairs.csv", *PFWILLOW_CLASSES], 1 * GIB),
    "spair": Benchmark(
        "SPair-71k", ["1KSvB0k2zXA06ojWNvFjBv0Ake426Y76k", "1s73NVEFPro260H1tXxCh1ain7oApR8of",
                      "17gXi6iSK6jIz4SGJzrO6ELJGYRAKUkhR"],
        "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz", "SPair-71k", [],
        ["JPEGImages", "PairAnnotation/test", "Layout/large/test.txt", "Layout/large/trn.txt"], 16 * GIB),
}

IMAGENET_HELP = """ImageNet-1k cannot be downloaded automatically (licence). Get ILSVRC2012_img_train.tar from
https://image-net.org/download-images (account required), extract it and each per-class tar so that
  <path>/train/<wnid>/<image>.JPEG     (1,000 folders, 1,281,167 images)
then point the training config's ImageNet path at <path>/train (any ImageFolder subset works)."""


class DownloadError(UserError):
    """A fetch, verification or extraction failed (one line, names the file and what to try)."""


# ------------------------------------------------------------------------------------------ checks
def looks_like_html(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


def content_problem(path: Path, digests: Mapping[str, str], expected: Mapping[str, Any]) -> str | None:
    """Why a downloaded file is not the one expected (None when it is): an HTML page, or a `size`,
    `sha256` (prefix) or `md5_prefix` of `expected` (a manifest entry; absent or None: not checked) that
    differs. `digests`: `file_digests(path)` (one read for every check and record)."""
    if looks_like_html(path):
        return "is an HTML page (an error, sign-in, quota or virus-scan page), not the file"
    size = expected.get("size")
    if size is not None and path.stat().st_size != int(size):
        return f"has {path.stat().st_size} bytes, not the published {size}"
    sha256 = str(expected.get("sha256") or "").lower()
    if sha256 and not digests["sha256"].startswith(sha256):
        return f"sha256 {digests['sha256'][:16]}... does not match the expected {sha256[:16]}..."
    md5 = str(expected.get("md5_prefix") or "").lower()
    if md5 and not digests["md5"].startswith(md5):
        return f"md5 does not start with {md5}"
    return None


def verify_archive(path: str | Path, sha256: str | None = None, md5_prefix: str | None = None) -> str:
    """Checksum when known (sha256, or an md5 prefix), and a readable tar/zip archive; returns the file's
    sha256 (hashed once, for the checks and the record)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DownloadError(f"{path} is missing or empty (the download failed; try again)")
    digests = file_digests(path, ("sha256", "md5") if md5_prefix else ("sha256",))
    problem = content_problem(path, digests, {"sha256": sha256, "md5_prefix": md5_prefix})
    if problem:
        hint = ("; install gdown (pip install gdown) or download it in a browser" if "HTML" in problem else
                " (corrupt or changed download; delete it and retry)")
        raise DownloadError(f"{path} {problem}{hint}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError) as err:
            raise DownloadError(f"{path} is not a readable zip archive ({err}); delete it, retry") from None
        if bad is not None:
            raise DownloadError(f"{path}: zip member {bad} is corrupt; delete it and retry")
        return digests["sha256"]
    try:
        with tarfile.open(path) as tf:
            for _ in tf:
                pass
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DownloadError(f"{path} is not a readable tar/zip archive ({err}); delete it, retry") from None
    return digests["sha256"]


def _check_member(name: str, archive: Path) -> PurePosixPath:
    pure = PurePosixPath(name.replace("\\", "/"))
    absolute = pure.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
    if absolute or ".." in pure.parts:
        raise DownloadError(f"{archive}: unsafe member path {name!r} (absolute or '..'); archive rejected")
    return pure


def _top(pure: PurePosixPath) -> str | None:
    parts = [p for p in pure.parts if p != "."]
    return parts[0] if parts else None


def _check_totals(archive: Path, count: int, size: int, max_bytes: int, max_members: int) -> None:
    """Refuse archive bombs: too many members, more bytes than `max_bytes` once extracted, or (past
    `RATIO_FLOOR`) more than `MAX_RATIO` extracted bytes per archive byte."""
    if count > max_members:
        raise DownloadError(f"{archive}: {count} members, more than the cap of {max_members}; "
                            f"archive rejected")
    if size > max_bytes:
        raise DownloadError(f"{archive}: would extract to {size / GIB:.2f} GiB, more than the cap of "
                            f"{max_bytes / GIB:.2f} GiB for this benchmark; archive rejected")
    packed = max(archive.stat().st_size, 1)
    if size > RATIO_FLOOR and size > MAX_RATIO * packed:
        raise DownloadError(f"{archive}: {packed} bytes would extract to {size / 2**20:.0f} MiB, a "
                            f"compression ratio of {size / packed:.0f} (more than {MAX_RATIO}: an archive "
                            f"bomb, not benchmark data); archive rejected")


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> tuple[set[str], int]:
    """Check every zip member (no links, safe paths); -> (top-level names, total extracted bytes)."""
    tops: set[str] = set()
    for info in zf.infolist():
        pure = _check_member(info.filename, archive)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise DownloadError(f"{archive}: member {info.filename!r} is a symbolic link; rejected")
        if (top := _top(pure)) is not None:
            tops.add(top)
    return tops, sum(info.file_size for info in zf.infolist())


def _tar_members(members: list[tarfile.TarInfo], archive: Path) -> tuple[set[str], int]:
    """Check every tar member: regular files and folders only (links of any kind are refused: the benchmarks
    have none, and a link judged by its name alone can escape through links extracted before it)."""
    tops: set[str] = set()
    for m in members:
        pure = _check_member(m.name, archive)
        if m.issym() or m.islnk():
            raise DownloadError(f"{archive}: member {m.name!r} is a link (-> {m.linkname!r}); archives with "
                                f"links are rejected")
        if not (m.isfile() or m.isdir()):
            raise DownloadError(f"{archive}: member {m.name!r} is a device or special file; rejected")
        if (top := _top(pure)) is not None:
            tops.add(top)
    return tops, sum(m.size for m in members if m.isfile())


def safe_extract(archive: str | Path, dest: str | Path, max_bytes: int = 16 * GIB,
                 max_members: int = MAX_MEMBERS) -> list[str]:
    """Extract a tar/zip archive into `dest` after checking every member (no absolute paths, no `..`, no
    links, no device files) and the totals (members, extracted bytes); returns the sorted top-level names.
    Nothing is written if a check fails; tar/zip read errors become one-line `DownloadError`s."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                tops, size = _zip_members(zf, archive)
                _check_totals(archive, len(zf.infolist()), size, max_bytes, max_members)
                zf.extractall(dest)
            return sorted(tops)
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            tops, size = _tar_members(members, archive)
            _check_totals(archive, len(members), size, max_bytes, max_members)
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DownloadError(f"{archive}: not a usable archive ({type(err).__name__}: {err}); delete it and "
                            f"retry") from None
    return sorted(tops)


def is_complete(name: str, root: str | Path) -> bool:
    bench = BENCHMARKS[name]
    folder = Path(root) / bench.folder
    return all((folder / rel).exists() for rel in bench.required)


# ------------------------------------------------------------------------------------------ fetching
def _progress(done: int, total: int | None, label: str, last: list[float]) -> None:
    now = time.monotonic()
    if now - last[0] < 1.0 and (total is None or done < total):
        return
    last[0] = now
    mb = done / 2**20
    text = f"{mb:8.1f} MiB" + (f" / {total / 2**20:.1f} MiB ({100 * done / total:5.1f} %)" if total else "")
    print(f"  {label}: {text}", file=sys.stderr, flush=True)


def announced_length(response: Any, label: str) -> int | None:
    """The response's `Content-Length` in bytes (None when absent). A malformed one is a `DownloadError`:
    without it a transfer cut short cannot be told from a complete one."""
    total = response.headers.get("Content-Length")
    if total is None:
        return None
    if not total.strip().isdigit():
        raise DownloadError(f"{label}: the server announced a malformed Content-Length {total[:40]!r}, so "
                            f"a complete transfer cannot be told from a cut one; nothing installed, retry "
                            f"later")
    return int(total)


def _stream(response: Any, out: Path, label: str) -> None:
    """Write the body to `<out>.part`; rename it to `out` only when every announced byte arrived."""
    total = announced_length(response, label)
    tmp = out.with_name(out.name + ".part")
    done, last = 0, [0.0]
    try:
        with open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
                done += len(chunk)
                _progress(done, total, label, last)
        if total is not None and done != total:
            raise DownloadError(f"{label}: transfer incomplete, {done} of {total} bytes received; retry")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)


def transport_candidates(url: str) -> list[str]:
    """A plain-http URL is tried over https first (most hosts serve both); other URLs as they are."""
    if url.startswith("http://"):
        return ["https://" + url[len("http://"):], url]
    return [url]


def _fetch_once(url: str, out: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "contrastive-correspondence-download"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            _stream(response, out, out.name)
    except http.client.IncompleteRead as err:
        raise DownloadError(f"could not fetch {url} (connection closed after {len(err.partial)} bytes; "
                            f"retry)") from None
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise DownloadError(f"could not fetch {url} ({err})") from None


def fetch_url(url: str, out: str | Path) -> Path:
    """HTTP(S) download with progress to `out` (via a .part file, complete transfers only); https first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for candidate in transport_candidates(url):
        print(f"fetching {candidate}", flush=True)
        try:
            _fetch_once(candidate, out)
        except DownloadError as err:
            failures.append(str(err))
            continue
        if candidate.startswith("http://"):
            print(f"  note: {candidate} came over plain http (no answer over https)", flush=True)
        return out
    raise DownloadError("; ".join(failures))


def fetch_drive(file_id: str, out: str | Path) -> Path:
    """Google Drive file -> `out`: `gdown` when installed, else the confirm-token / uuid flow."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching Google Drive id {file_id}", flush=True)
    try:
        import gdown  # type: ignore[import-not-found]
    except ImportError:
        gdown = None
    if gdown is not None:
        try:
            result = gdown.download(id=file_id, output=str(out), quiet=False)
        except Exception as err:  # gdown raises its own exception types
            raise DownloadError(f"gdown could not fetch Drive id {file_id} ({err})") from None
        if not result or not out.is_file():
            raise DownloadError(f"gdown could not fetch Drive id {file_id} (quota exceeded or file removed)")
        return out
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    url = f"https://drive.google.com/uc?export=download&id={file_id}"
    try:
        response = opener.open(url, timeout=60)
        if "text/html" in response.headers.get("Content-Type", ""):
            page = response.read().decode("utf-8", "replace")
            params = {"id": file_id, "export": "download", "confirm": "t"}
            for key in ("confirm", "uuid", "at"):
                m = (re.search(rf'name="{key}" value="([^"]+)"', page)
                     or re.search(rf"{key}=([0-9A-Za-z_-]+)", page))
                if m:
                    params[key] = m.group(1)
            url = "https://drive.usercontent.google.com/download?" + urllib.parse.urlencode(params)
            response = opener.open(url, timeout=60)
        with response:
            _stream(response, out, out.name)
    except (OSError, ValueError) as err:
        raise DownloadError(f"could not fetch Drive id {file_id} ({err}); install gdown (pip install gdown) "
                            f"and retry") from None
    return out


# ------------------------------------------------------------------------------------------ datasets
def install_archive(archive: Path, root: Path, top: str, folder: str, max_bytes: int = 16 * GIB) -> Path:
    """Extract `archive` under `root/.extract-<folder>`, move its top folder `top` to `root/<folder>`."""
    staging = root / f".extract-{folder}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tops = safe_extract(archive, staging, max_bytes)
        if top not in tops:
            found = ", ".join(tops) or "nothing"
            raise DownloadError(f"{archive}: expected a top folder {top}/, found {found}")
        target = root / folder
        if target.exists():
            shutil.rmtree(target)
        (staging / top).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def plan(name: str, root: Path) -> list[str]:
    """Human-readable steps `download_dataset` would take."""
    bench = BENCHMARKS[name]
    if is_complete(name, root):
        return [f"{bench.folder}: already complete in {root / bench.folder}, skipped"]
    steps = [f"{bench.folder}: Google Drive id {i} -> {root / (bench.folder + '.tar.gz')}, extract, keep "
             f"{bench.folder}/" for i in bench.drive_ids]
    steps.append(f"{bench.folder}: else official archive {bench.official_url}, move {bench.official_top}/ -> "
                 f"{root / bench.folder}")
    steps += [f"{bench.folder}: pair list {'Google Drive id ' if p.drive else ''}{p.source} -> {p.target}"
              for p in bench.pair_lists]
    return steps


def download_dataset(name: str, root: str | Path, keep_archive: bool = False) -> bool:
    """Fetch one benchmark into `root/<folder>`; True on success. Prints what failed and what to try."""
    bench, root = BENCHMARKS[name], Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if is_complete(name, root):
        print(f"{bench.folder}: already complete in {root / bench.folder}, skipped")
        return True
    failures: list[str] = []
    archive = root / f"{bench.folder}.tar.gz"
    for file_id in bench.drive_ids:
        try:
            fetch_drive(file_id, archive)
            say_unverifiable(archive, verify_archive(archive))
            install_archive(archive, root, bench.folder, bench.folder, bench.max_extract_bytes)
            if is_complete(name, root):
                print(f"{bench.folder}: done ({root / bench.folder})")
                return True
            failures.append(f"Drive {file_id}: archive lacks {', '.join(_missing(name, root))}")
        except DownloadError as err:
            failures.append(str(err))
            print(f"  failed: {err}", file=sys.stderr)
        finally:
            if not keep_archive:
                archive.unlink(missing_ok=True)
    official = root / PurePosixPath(urllib.parse.urlparse(bench.official_url).path).name
    try:
        fetch_url(bench.official_url, official)
        say_unverifiable(official, verify_archive(official))
        install_archive(official, root, bench.official_top, bench.folder, bench.max_extract_bytes)
        for pair_list in bench.pair_lists:
            fetch_pair_list(pair_list, root / bench.folder / pair_list.target)
    except DownloadError as err:
        failures.append(str(err))
    finally:
        if not keep_archive:
            official.unlink(missing_ok=True)
    if is_complete(name, root):
        print(f"{bench.folder}: done from the official archive ({root / bench.folder})")
        return True
    missing = ", ".join(_missing(name, root))
    reasons = "; ".join(failures) or "incomplete"
    print(f"{bench.folder}: FAILED ({reasons}); missing: {missing}. Try: pip install gdown and rerun, or "
          f"download the files listed in docs/datasets.md (Downloads) by hand into {root / bench.folder}",
          file=sys.stderr)
    return False


def say_unverifiable(archive: Path, sha256: str) -> None:
    """The benchmarks publish no checksum: say so, and record the sha256 of what was received."""
    print(f"  {archive.name}: unverifiable (no published checksum); checked only for a complete transfer and "
          f"a readable archive; sha256 {sha256}", flush=True)


def count_rows(path: Path) -> int:
    """Non-empty lines after the header of a CSV pair list."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return max(len(lines) - 1, 0)


def fetch_pair_list(pair_list: PairList, target: Path) -> None:
    """Fetch a pair list; refuse an HTML page or a list without its published number of rows."""
    (fetch_drive if pair_list.drive else fetch_url)(pair_list.source, target)
    problem = None
    if looks_like_html(target):
        problem = "came back as an HTML page"
    elif pair_list.rows is not None and (rows := count_rows(target)) != pair_list.rows:
        problem = f"has {rows} rows, not the published {pair_list.rows} (truncated or changed)"
    if problem:
        target.unlink()
        raise DownloadError(f"pair list {pair_list.source} {problem}; fetch it by hand into {target}")


def _missing(name: str, root: Path) -> list[str]:
    bench = BENCHMARKS[name]
    return [rel for rel in bench.required if not (root / bench.folder / rel).exists()]


# ------------------------------------------------------------------------------------------ pretrained
MANIFEST = REPO_ROOT / "pretrained_models" / "manifest.yaml"


def load_manifest(path: str | Path = MANIFEST) -> dict[str, Any]:
    """Read and check the checkpoint manifest: every target's candidates exist and have a URL."""
    try:
        manifest = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"checkpoint manifest {path} is unreadable ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), dict) or not isinstance(
            manifest.get("targets"), dict):
        raise UserError(f"checkpoint manifest {path} needs the mappings 'checkpoints' and 'targets'")
    for name, spec in manifest["targets"].items():
        check_target(name, spec, manifest, path)
    return manifest


def check_target(name: str, spec: Any, manifest: Mapping[str, Any], path: str | Path = MANIFEST) -> None:
    """A manifest target: a plain file name (written into `--out`, never elsewhere) and candidates that
    each have a checkpoint entry with a URL; a one-line `UserError` naming the manifest otherwise."""
    if not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or not isinstance(
            spec.get("candidates"), list):
        raise UserError(f"checkpoint manifest {path}: target {name!r} needs 'file' and a list 'candidates'")
    file = spec["file"]
    if file in ("", ".", "..") or PurePosixPath(file).name != file or "\\" in file:
        raise UserError(f"checkpoint manifest {path}: target {name!r} has file {file!r}; it must be a plain "
                        f"file name (no folders, no '..'), which is written into --out")
    for key in spec["candidates"]:
        entry = manifest["checkpoints"].get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise UserError(f"checkpoint manifest {path}: target {name!r} names candidate {key!r}, which has "
                            f"no entry with a 'url' under 'checkpoints'")


def verification_kind(entry: dict[str, Any]) -> str:
    """What a manifest entry lets us verify: "sha256", "md5", "size" or "unverifiable"."""
    for key, kind in (("sha256", "sha256"), ("md5_prefix", "md5"), ("size", "size")):
        if entry.get(key):
            return kind
    return "unverifiable"


def present_and_verified(out: Path, spec: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """An installed file counts only if it still matches its fetched.yaml record and the manifest."""
    if not out.is_file():
        return False
    record_path = out.parent / "fetched.yaml"
    try:
        records = yaml.safe_load(record_path.read_text()) if record_path.is_file() else None
        record = (records or {}).get(spec["file"])
    except (OSError, yaml.YAMLError, AttributeError):
        record = None
    entry = manifest["checkpoints"].get((record or {}).get("checkpoint"), {})
    digests = file_digests(out)
    problem = content_problem(out, digests, entry)
    if problem is None and record and record.get("sha256") and digests["sha256"] != record["sha256"]:
        problem = "differs from the file recorded in fetched.yaml"
    if problem is None and not record:
        problem = "has no fetched.yaml record"
    if problem:
        print(f"{out} {problem}: fetching it again", file=sys.stderr)
        return False
    return True


def record_fetch(out_dir: Path, spec: dict[str, Any], key: str, entry: dict[str, Any], out: Path,
                 digests: Mapping[str, str]) -> None:
    record_path = out_dir / "fetched.yaml"
    records = (yaml.safe_load(record_path.read_text()) or {}) if record_path.is_file() else {}
    fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    records[spec["file"]] = {"checkpoint": key, "url": entry["url"], "sha256": digests["sha256"],
                             "md5": digests["md5"], "size": out.stat().st_size,
                             "verified": verification_kind(entry), "fetched": fetched}
    atomic_write_text(record_path, yaml.safe_dump(records, sort_keys=True))


def download_pretrained(target: str, out_dir: str | Path, manifest: dict[str, Any],
                        dry_run: bool = False, manifest_path: str | Path = MANIFEST) -> bool:
    """Fetch `targets[target]` (a file name and candidate checkpoints, in order) into `out_dir`; the first
    candidate that downloads and passes its checks wins; `<out_dir>/fetched.yaml` records which one.
    `manifest_path`: where `manifest` came from (named in messages)."""
    spec = manifest["targets"].get(target)
    if spec is None:
        choices = ", ".join(manifest["targets"])
        raise UserError(f"unknown checkpoint target {target!r} in {manifest_path} (choose from {choices})")
    check_target(target, spec, manifest, manifest_path)
    out_dir = Path(out_dir)
    out = out_dir / spec["file"]
    if not dry_run:
        check_writable_dir(out_dir, "--out")
        if present_and_verified(out, spec, manifest):
            print(f"{out} already present and verified, skipped")
            return True
    for key in spec["candidates"]:
        entry = manifest["checkpoints"][key]
        if dry_run:
            checks = [f"{k} {entry[k]}" for k in ("size", "sha256", "md5_prefix") if entry.get(k)]
            print(f"would fetch {entry['url']} -> {out} (verified by: {', '.join(checks) or 'unverifiable'}; "
                  f"{entry.get('note', '')})")
            continue
        tmp = out.with_name(out.name + ".download")
        try:
            fetch_url(entry["url"], tmp)
            digests = file_digests(tmp)
            problem = content_problem(tmp, digests, entry)
            if problem:
                raise DownloadError(f"{entry['url']}: the file {problem}")
            if verification_kind(entry) == "unverifiable":
                print(f"  {out.name}: unverifiable (the manifest has no size or checksum for {key}); checked "
                      f"only for a complete transfer that is not an HTML page", file=sys.stderr)
            tmp.replace(out)
            record_fetch(out_dir, spec, key, entry, out, digests)
            print(f"{out}: from {key} ({entry['url']})")
            return True
        except DownloadError as err:
            print(f"  failed: {err}", file=sys.stderr)
        finally:
            tmp.unlink(missing_ok=True)
    if not dry_run:
        print(f"{target}: no candidate could be fetched; download one of the URLs in {manifest_path} by "
              f"hand into {out}", file=sys.stderr)
    return dry_run


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="download", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ds = sub.add_parser("datasets", help="PF-PASCAL, PF-WILLOW, SPair-71k into ROOT (HPF/SCOT layout)")
    ds.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                    help="fetch only this benchmark (repeatable)")
    ds.add_argument("--root", default="Datasets_SCOT", help="folder receiving PF-PASCAL/, PF-WILLOW/, ...")
    ds.add_argument("--dry-run", action="store_true", help="print what would be fetched (no network/writes)")
    ds.add_argument("--keep-archives", action="store_true")
    pre = sub.add_parser("pretrained", help="ImageNet MoCo checkpoint(s) into pretrained_models/")
    pre.add_argument("--target", default="moco", help="a key of 'targets' in the manifest")
    pre.add_argument("--out", default=str(MANIFEST.parent))
    pre.add_argument("--manifest", default=str(MANIFEST))
    pre.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "pretrained":
        ok = download_pretrained(args.target, args.out, load_manifest(args.manifest), args.dry_run,
                                 args.manifest)
        return 0 if ok else 1
    names = args.only or ["pfpascal", "pfwillow", "spair"]
    root = Path(args.root)
    if not args.dry_run:
        check_writable_dir(root, "--root")
    ok = True
    for name in dict.fromkeys(names):
        if args.dry_run:
            for step in plan(name, root):
                print(f"[dry-run] {step}")
        else:
            ok &= download_one(name, root, args.keep_archives)
    print(IMAGENET_HELP)
    return 0 if ok else 1


def download_one(name: str, root: Path, keep_archive: bool) -> bool:
    """`download_dataset`, with any failure reported on one line so that the next benchmark still runs."""
    try:
        return download_dataset(name, root, keep_archive=keep_archive)
    except (UserError, OSError) as err:
        print(f"{BENCHMARKS[name].folder}: FAILED ({err})", file=sys.stderr)
        return False


if __name__ == "__main__":
    from configs.runtime import run_cli

    run_cli(main)
