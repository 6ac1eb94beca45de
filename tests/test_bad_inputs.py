"""The bad-input table: every case runs a CLI (in-process through `run_cli`, a few as real subprocesses) and
must exit non-zero with exactly one line on stderr naming the problem, and no traceback.

CLIs: training/train.py, validation_and_test/test.py, validation_and_test/beamsearch.py,
validation_and_test/match.py, data/download.py (behind scripts/download_*.sh). No case downloads, trains or
evaluates: every refusal comes first."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import CLI_LOGGERS, ENV, REPO, assert_one_line_error, hold_lock

from configs.runtime import run_cli

Argv = Callable[[Path], list[str]]


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _yaml(tmp: Path, data: dict, name: str = "preset.yaml") -> str:
    return str(_file(tmp, name, yaml.safe_dump(data)))


def _cycle(tmp: Path) -> str:
    _file(tmp, "b.yaml", "_base_: a.yaml\n")
    return str(_file(tmp, "a.yaml", "_base_: b.yaml\nseed: 1\n"))


def _non_empty(tmp: Path) -> str:
    _file(tmp, "run/metrics.jsonl", "{}\n")
    return str(tmp / "run")


def _complete_result(tmp: Path, marker: str = "results.json") -> str:
    _file(tmp, f"done/{marker}", json.dumps({"complete": True}))
    return str(tmp / "done")


def _locked(tmp: Path) -> str:
    hold_lock(tmp / "busy")  # as a live run would; let go when the test process ends
    return str(tmp / "busy")


def _damaged_run(tmp: Path, run_id: bytes = b"abc123\n") -> str:
    """A run folder whose only checkpoint is empty (a kill during the first write of a run killed before)."""
    _file(tmp, "run/run_id", run_id)
    _file(tmp, "run/metrics.jsonl", '{"step": 1}\n')
    _file(tmp, "run/checkpoints/last.pth", b"")
    return str(tmp / "run")


def _untrusted_pickle(tmp: Path) -> str:
    import argparse

    import torch

    path = tmp / "evil.pth"
    torch.save({"state_dict": argparse.Namespace(a=1)}, path)  # a global weights_only loading refuses
    return str(path)


# ------------------------------------------------------------------------------------------- train.py
TRAIN = ["--config", "configs/demo.yaml", "--device", "cpu"]


def _train(*extra: str, out: Callable[[Path], str] | None = None) -> Argv:
    return lambda tmp: [*TRAIN, "--output-dir", out(tmp) if out else str(tmp / "run"), *extra]


TRAIN_CASES: dict[str, tuple[Argv, str]] = {
    "lr_nan": (_train("optim.lr=.nan"), "optim.lr"),
    "lr_inf": (_train("optim.lr=.inf"), "finite"),
    "lr_negative": (_train("optim.lr=-0.1"), "optim.lr=-0.1"),
    "max_steps_zero": (_train("max_steps=0"), "max_steps"),
    "max_steps_negative": (_train("max_steps=-1"), "max_steps"),
    "num_workers_negative": (_train("num_workers=-1"), "num_workers"),
    "momentum_nan": (_train("optim.momentum=.nan"), "optim.momentum"),
    "weight_decay_negative": (_train("optim.weight_decay=-1"), "optim.weight_decay"),
    "gamma_zero": (_train("optim.gamma=0"), "optim.gamma"),
    "clip_zero": (_train("optim.clip_grad_norm=0"), "optim.clip_grad_norm"),
    "clip_per_term_negative": (_train("optim.clip_grad_norm_per_term=-1"),
                               "optim.clip_grad_norm_per_term=-1"),
    "pixel_only_stream_with_moco": (_train("image_data.source=none"), "image_data.source=none leaves"),
    "clip_per_term_zero": (_train("optim.clip_grad_norm_per_term=0"), "optim.clip_grad_norm_per_term=0"),
    "clip_per_term_nan": (_train("optim.clip_grad_norm_per_term=.nan"), "optim.clip_grad_norm_per_term"),
    "centre_loss_weight_inf": (_train("cycle.centre_loss_weight=.inf"), "'cycle.centre_loss_weight' must be "
                                                                         "a finite number"),
    "centre_loss_weight_nan": (_train("cycle.centre_loss_weight=.nan"), "cycle.centre_loss_weight"),
    "cycle_jitter_nan": (_train("cycle.crop_jitter=.nan"), "cycle.crop_jitter"),
    "cycle_loss_weight_negative": (_train("cycle.loss_weight=-1"), "cycle.loss_weight"),
    "moco_loss_weight_nan_in_preset": (lambda t: ["--config", str(_file(t, "c.yaml", "_base_: " + str(
        REPO / "configs/demo.yaml") + "\nmoco:\n  loss_weight: .nan\n")), "--device", "cpu", "--output-dir",
        str(t / "r")], "c.yaml: config key 'moco.loss_weight' must be a finite number"),
    "final_lr_negative": (_train("optim.final_lr=-1"), "optim.final_lr"),
    "warmup_inf": (_train("optim.warmup_epochs=.inf"), "optim.warmup_epochs"),
    "steps_per_epoch_zero": (_train("steps_per_epoch=0"), "steps_per_epoch"),
    "image_size_zero": (_train("image_data.image_size=0"), "image_data.image_size"),
    "moco_temperature_zero": (_train("moco.temperature=0"), "moco.temperature"),
    "epochs_zero": (_train("epochs=0"), "epochs"),
    "batch_zero": (_train("batch_size=0"), "batch_size"),
    "keep_last_zero": (_train("checkpoint.keep_last=0"), "keep_last"),
    "unknown_key": (_train("optim.learning_rate=0.1"), "optim.learning_rate"),
    "override_without_value": (_train("seed"), "bad override"),
    "override_bad_type": (_train("seed=abc"), "command line: config key 'seed' expects int"),
    "override_unknown_nested": (_train("optim.lrr=1"), "command line: unknown config key 'optim.lrr'"),
    "run_folder_is_a_file": (_train(out=lambda t: str(_file(t, "f.txt", "x"))), "is a file"),
    "run_folder_holds_a_run": (_train(out=_non_empty), "already holds a run"),
    "resume_and_overwrite": (_train("--resume", "auto", "--overwrite"), "exclude each other"),
    "resume_auto_empty_checkpoint": (_train("--resume", "auto", out=_damaged_run),
                                     "no checkpoint of this run can be resumed"),
    "resume_auto_binary_run_id": (_train("--resume", "auto", out=lambda t: _damaged_run(t, b"\xff\x00\xfe")),
                                  "run_id is not a run id"),
    "resume_missing_file": (lambda t: [*_train()(t), "--resume", str(t / "none.pth")], "no such checkpoint"),
    "resume_garbage": (lambda t: [*_train()(t), "--resume", str(_file(t, "g.pth", b"garbage"))],
                       "cannot read checkpoint"),
    "resume_untrusted_pickle": (lambda t: [*_train()(t), "--resume", _untrusted_pickle(t)],
                                "argparse.Namespace"),
    "config_missing": (lambda t: ["--config", str(t / "none.yaml"), "--output-dir", str(t / "r")],
                       "not found"),
    "config_base_cycle": (lambda t: ["--config", _cycle(t), "--output-dir", str(t / "r")], "cycle"),
    "config_base_number": (lambda t: ["--config", str(_file(t, "c.yaml", "_base_: 5\n")), "--output-dir",
                                      str(t / "r")], "_base_ must be one file name"),
    "config_base_list": (lambda t: ["--config", str(_file(t, "c.yaml", "_base_: [a.yaml, b.yaml]\n")),
                                    "--output-dir", str(t / "r")], "_base_ must be one file name"),
    "config_not_utf8": (lambda t: ["--config", str(_file(t, "c.yaml", b"seed: 1\nname: \xff\xfe\n")),
                                   "--output-dir", str(t / "r")], "not UTF-8"),
    "config_invalid_yaml": (lambda t: ["--config", str(_file(t, "c.yaml", "seed: [1\n")), "--output-dir",
                                       str(t / "r")], "invalid YAML"),
    "config_top_level_list": (lambda t: ["--config", str(_file(t, "c.yaml", "- 1\n")), "--output-dir",
                                         str(t / "r")], "mapping"),
    "config_base_missing": (lambda t: ["--config", str(_file(t, "c.yaml", "_base_: gone.yaml\n")),
                                       "--output-dir", str(t / "r")], "gone.yaml"),
}


# -------------------------------------------------------------------------------------------- test.py
def _eval(*extra: str) -> Argv:
    return lambda tmp: ["--dataset", "pfwillow", "--datapath", str(tmp / "no-data"), "--device", "cpu",
                        "--output-dir", str(tmp / "out"), *extra]


def _eval_preset(values: dict) -> Argv:
    return lambda tmp: [*_eval()(tmp), "--config", _yaml(tmp, {"dataset": "pfwillow", **values})]


EVAL_CASES: dict[str, tuple[Argv, str]] = {
    "alpha_nan": (_eval("--alpha", "nan"), "alpha"),
    "alpha_inf": (_eval("--alpha", "inf"), "alpha"),
    "alpha_zero": (_eval("--alpha", "0"), "(0, 1]"),
    "alpha_above_one": (_eval("--alpha", "1.5"), "(0, 1]"),
    "alpha_negative": (_eval("--alpha", "-0.1"), "(0, 1]"),
    "alpha_list_with_nan": (_eval("--alpha", "0.1", "nan"), "alpha"),
    "exp1_zero": (_eval("--exp1", "0"), "exp1"),
    "exp1_nan": (_eval("--exp1", "nan"), "exp1"),
    "exp2_negative": (_eval("--exp2", "-1"), "exp2"),
    "exp2_inf": (_eval("--exp2", "inf"), "exp2"),
    "eps_zero": (_eval("--eps", "0"), "eps"),
    "eps_nan": (_eval("--eps", "nan"), "eps"),
    "max_pairs_zero": (_eval("--max-pairs", "0"), "max_pairs"),
    "sinkhorn_iters_zero": (_eval("--sinkhorn-iters", "0"), "sinkhorn_iters"),
    "flag_blamed_on_command_line": (_eval("--exp2", "-2"), "command line"),
    "output_dir_is_a_file": (lambda t: [*_eval()(t), "--output-dir", str(_file(t, "f", "x"))], "is a file"),
    "output_dir_in_proc": (lambda t: [*_eval()(t), "--output-dir", "/proc/cc-no-such/out"], "not a writable"),
    "output_dir_complete": (lambda t: [*_eval()(t), "--output-dir", _complete_result(t)], "--overwrite"),
    "output_dir_locked": (lambda t: [*_eval()(t), "--output-dir", _locked(t)], "in use"),
    "vis_dir_is_a_file": (lambda t: [*_eval()(t), "--vis-dir", str(_file(t, "v", "x"))], "--vis-dir"),
    "preset_long_side_zero": (_eval_preset({"long_side": 0}), "long_side"),
    "preset_long_side_small": (_eval_preset({"long_side": 16}), ">= 32"),
    "preset_num_workers_negative": (_eval_preset({"num_workers": -1}), "num_workers"),
    "preset_alpha_nan": (_eval_preset({"alpha": [float("nan")]}), "preset.yaml"),
    "preset_exp2_negative": (_eval_preset({"exp2": -1.0}), "exp2"),
    "preset_unknown_key": (_eval_preset({"alhpa": [0.1]}), "alhpa"),
    "preset_base_cycle": (lambda t: [*_eval()(t), "--config", _cycle(t)], "cycle"),
    "preset_not_utf8": (lambda t: [*_eval()(t), "--config", str(_file(t, "c.yaml", b"alpha: [0.1]\n\xff"))],
                        "not UTF-8"),
    "preset_missing": (lambda t: [*_eval()(t), "--config", str(t / "none.yaml")], "not found"),
    "dataset_root_missing": (_eval(), "no-data"),
}


# ------------------------------------------------------------------------------------- beamsearch.py
def _search(*extra: str) -> Argv:
    return lambda tmp: [*_eval()(tmp)[:-2], "--output-dir", str(tmp / "search"), *extra]


SEARCH_CASES: dict[str, tuple[Argv, str]] = {
    "alpha_zero": (_search("--alpha", "0"), "search_alpha"),
    "alpha_nan": (_search("--alpha", "nan"), "search_alpha"),
    "alpha_two": (_search("--alpha", "2"), "(0, 1]"),
    "rotate_nan": (_search("--rotate", "nan"), "rotate"),
    "rotate_inf": (_search("--rotate", "inf"), "rotate"),
    "exp2_negative": (_search("--exp2", "-1"), "exp2"),
    "exp1_inf": (_search("--exp1", "inf"), "exp1"),
    "eps_zero": (_search("--eps", "0"), "eps"),
    "beam_zero": (_search("--beam", "0"), "beam"),
    "depth_zero": (_search("--depth", "0"), "depth"),
    "cache_negative": (_search("--cache-mb", "-1"), "cache_mb"),
    "temperature_zero": (_search("--temperature", "0"), "temperature"),
    "flip_prob_two": (_search("--flip-prob", "2"), "flip_prob"),
    "patch_zero": (_search("--patch", "0"), "patch"),
    "max_pairs_zero": (_search("--max-pairs", "0"), "max_pairs"),
    "output_dir_is_a_file": (lambda t: [*_search()(t), "--output-dir", str(_file(t, "f", "x"))], "is a file"),
    "output_dir_complete": (lambda t: [*_search()(t), "--output-dir", _complete_result(t, "search.json")],
                            "holds a complete search.json; choose another folder or pass --overwrite"),
    "output_dir_complete_overwrite": (lambda t: [*_search()(t), "--output-dir", _complete_result(
        t, "search.json"), "--overwrite"], "no-data"),  # past the claim: the next refusal is the data's
    "output_dir_locked": (lambda t: [*_search()(t), "--output-dir", _locked(t)], "in use by another run"),
    "preset_long_side_zero": (lambda t: [*_search()(t), "--config", _yaml(t, {"long_side": 0})], "long_side"),
}


# ------------------------------------------------------------------------------------------ download
def _manifest(tmp: Path, data: dict | str | bytes) -> str:
    content = data if isinstance(data, (str, bytes)) else yaml.safe_dump(data)
    return str(_file(tmp, "manifest.yaml", content))


DOWNLOAD_CASES: dict[str, tuple[Argv, str]] = {
    "unknown_target": (lambda t: ["pretrained", "--target", "nope", "--out", str(t)], "unknown checkpoint"),
    "manifest_missing": (lambda t: ["pretrained", "--manifest", str(t / "none.yaml")], "unreadable"),
    "manifest_candidate_missing": (
        lambda t: ["pretrained", "--out", str(t), "--manifest", _manifest(
            t, {"targets": {"moco": {"file": "m", "candidates": ["gone"]}}, "checkpoints": {}})],
        "'gone'"),
    "manifest_not_mapping": (lambda t: ["pretrained", "--manifest", _manifest(t, "- 1\n")], "mappings"),
    "manifest_invalid_yaml": (lambda t: ["pretrained", "--manifest", _manifest(t, "targets: [\n")],
                              "unreadable"),
    "manifest_not_utf8": (lambda t: ["pretrained", "--manifest", _manifest(t, b"targets: \xff\n")],
                          "unreadable"),
    "manifest_file_escapes_out": (
        lambda t: ["pretrained", "--out", str(t / "out"), "--manifest", _manifest(
            t, {"targets": {"moco": {"file": "../../x.pth", "candidates": ["c"]}},
                "checkpoints": {"c": {"url": "http://127.0.0.1:9/x"}}})],
        "has file '../../x.pth'; it must be a plain file name"),
    "out_is_a_file": (lambda t: ["pretrained", "--out", str(_file(t, "f", "x"))], "--out"),
    "root_is_a_file": (lambda t: ["datasets", "--root", str(_file(t, "f", "x"))], "--root"),
    "root_in_proc": (lambda t: ["datasets", "--root", "/proc/cc-no-such/data"], "--root"),
}


# ------------------------------------------------------------------------------------------ match.py
def _photo(tmp: Path, name: str = "p.png") -> str:
    from PIL import Image

    path = tmp / name
    Image.new("RGB", (64, 48), (90, 120, 30)).save(path)
    return str(path)


def _checkpoint(tmp: Path, arch: str = "resnet18") -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp / f"{arch}.pth"
    net = getattr(torchvision.models, arch)(num_classes=8)
    torch.save({"arch": arch, "state_dict": net.state_dict()}, path)
    return str(path)


def _match(*extra: str, src: Callable[[Path], str] = _photo, kps: str | None = "5,5") -> Argv:
    return lambda t: [src(t), _photo(t, "q.png"), "--device", "cpu", "--output-dir", str(t / "m"),
                      *([f"--src-kps={kps}"] if kps is not None else []), *extra]


MATCH_CASES: dict[str, tuple[Argv, str]] = {
    "image_missing": (_match(src=lambda t: str(t / "none.png")), "is missing"),
    "image_unreadable": (_match(src=lambda t: str(_file(t, "bad.png", b"not a png"))), "unreadable"),
    "image_too_thin": (_match(src=lambda t: str(_file(t, "thin.pgm", b"P5 2000 1 255\n" + bytes(2000)))),
                       "at least 8"),
    "image_too_elongated": (_match(src=lambda t: str(_file(t, "long.pgm",
                                                                 b"P5 10000 10 255\n" + bytes(10**5)))),
                            "long.pgm is 10000x10 pixels, more than 16 times longer than wide"),
    "kps_outside": (_match(kps="5,5;64,10"), "outside the 64x48 image"),
    "kps_negative": (_match(kps="-1,5"), "outside"),
    "kps_malformed": (_match(kps="5;5"), "not a pair of numbers"),
    "kps_not_numbers": (_match(kps="a,b"), "not a pair of numbers"),
    "kps_nan": (_match(kps="nan,3"), "not finite"),
    "kps_empty": (_match(kps=";"), "no keypoints"),
    "kps_file_missing": (lambda t: _match(kps=str(t / "none.json"))(t), "is missing"),
    "kps_json_invalid": (lambda t: _match(kps=str(_file(t, "k.json", "[[1, 2]")))(t), "not valid JSON"),
    "kps_json_wrong_shape": (lambda t: _match(kps=str(_file(t, "k.json", '{"a": 1}')))(t), "list of [x, y]"),
    "kps_csv_three_columns": (lambda t: _match(kps=str(_file(t, "k.csv", "1,2,3\n")))(t), "pair of numbers"),
    "grid_zero": (_match("--grid", "0", kps=None), "--grid"),
    "exp2_negative": (_match("--exp2", "-1"), "exp2"),
    "output_dir_is_a_file": (lambda t: [*_match()(t), "--output-dir", str(_file(t, "f", "x"))], "is a file"),
    "checkpoint_wrong_arch": (lambda t: _match("--weights", _checkpoint(t))(t),
                              "hyperpixel ids for resnet50 but the weights are a resnet18"),
    "checkpoint_not_a_resnet": (lambda t: _match("--weights", str(_file(t, "x.pth", b"garbage")))(t),
                                "cannot read checkpoint"),
}


def _main(cli: str):
    if cli == "train":
        from training.train import main
    elif cli == "eval":
        from validation_and_test.test import main
    elif cli == "search":
        from validation_and_test.beamsearch import main
    elif cli == "match":
        from validation_and_test.match import main
    else:
        from data.download import main
    return main


CASES = [pytest.param(cli, argv, needle, id=f"{cli}-{name}")
         for cli, table in (("train", TRAIN_CASES), ("eval", EVAL_CASES), ("search", SEARCH_CASES),
                            ("download", DOWNLOAD_CASES), ("match", MATCH_CASES))
         for name, (argv, needle) in table.items()]


@pytest.fixture(autouse=True)
def fresh_loggers():
    """The project's loggers bind the stderr of the test that created them: start each case afresh."""
    names = CLI_LOGGERS
    for name in names:
        logging.getLogger(name).handlers.clear()
    yield
    for name in names:
        logging.getLogger(name).handlers.clear()


def test_table_has_at_least_sixty_distinct_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("cli, argv, needle", CASES)
def test_bad_input_is_one_line_error(cli, argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = argv(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(_main(cli), args)
    assert_one_line_error(stop.value.code, capsys.readouterr().err, needle)


# the real entry points, as users start them (a few: each costs an interpreter start)
SUBPROCESS_CASES = [
    (["training/train.py", *TRAIN, "--output-dir", "{tmp}/run", "optim.lr=.nan"], "optim.lr"),
    (["validation_and_test/test.py", "--dataset", "pfwillow", "--alpha", "inf", "--output-dir", "{tmp}/o"],
     "alpha"),
    (["validation_and_test/beamsearch.py", "--dataset", "pfwillow", "--rotate", "nan"], "rotate"),
    (["validation_and_test/match.py", "{tmp}/none.png", "{tmp}/none2.png"], "none.png is missing"),
]


@pytest.mark.parametrize("argv, needle", SUBPROCESS_CASES, ids=["train", "test", "beamsearch", "match"])
def test_entry_points_as_subprocesses(argv, needle, tmp_path):
    cmd = [sys.executable, *(a.format(tmp=tmp_path) for a in argv)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, needle)


def test_download_script_root_is_a_file(tmp_path):
    env = {**ENV, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/download_datasets.sh", "--root", str(_file(tmp_path, "f", "x"))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "--root")
