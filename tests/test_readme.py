"""Every command in the README's code blocks is exercised here (offline, CPU, tiny size).

- every command is parsed by its own CLI parser (torchrun commands: torchrun's parser, then the script's);
- downloads run with `--dry-run`; `--weights imagenet` reaches its one-line offline error;
- `--device cuda` without a GPU gives its one-line error;
- (slow) evaluation, training and layer-search commands run for real at tiny size: the data root is swapped
  for a generated fixture or `../shared/realdata`, checkpoint paths for a seeded random checkpoint, and
  size-reducing flags/overrides are appended (later flags win).
A command the README gains without a handler here fails `test_every_readme_command_has_a_handler`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO_ROOT, SHARED_REALDATA
from helpers import spair_pairs, write_pascal, write_spair

from configs.runtime import UserError
from training.config import load_train_config

README = REPO_ROOT / "README.md"
SCRIPTS = ("validation_and_test/test.py", "training/train.py", "validation_and_test/beamsearch.py",
           "scripts/demo.py", "scripts/ablation.py", "validation_and_test/match.py",
           "scripts/sample_photos.py")


def readme_commands() -> list[str]:
    """Shell commands of the README's indented code blocks (continuations joined, comments dropped)."""
    commands, pending = [], ""
    for line in README.read_text().splitlines():
        if not line.startswith("    "):
            pending = ""
            continue
        text = line.strip()
        if pending:
            text = pending + " " + text
        elif not re.match(r"(python|bash|torchrun|make)\b", text):
            continue
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        pending = ""
        commands.append(text.split("  #")[0].strip())
    return commands


def split_command(cmd: str) -> tuple[str, list[str]]:
    """-> (script path relative to the repo, its arguments); torchrun's own options are parsed off."""
    tokens = shlex.split(cmd)
    if tokens[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(tokens[1:])
        return args.training_script, list(args.training_script_args)
    if tokens[0] == "python":
        return tokens[1], tokens[2:]
    return " ".join(tokens[:2]), tokens[2:]


COMMANDS = readme_commands()


def test_readme_lists_the_main_commands():
    heads = {split_command(c)[0] for c in COMMANDS}
    wanted = {"make demo", "make test", "bash scripts/download_datasets.sh",
              "bash scripts/download_pretrained.sh", *SCRIPTS[:3]}
    assert wanted <= heads | set(COMMANDS)
    assert sum(c.startswith("torchrun") for c in COMMANDS) >= 3


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_readme_command_has_a_handler(cmd):
    script, args = split_command(cmd)
    if script.startswith("make"):
        target = script.split()[1]
        assert re.search(rf"^{re.escape(target)}:", (REPO_ROOT / "Makefile").read_text(), re.M), target
        return
    assert script in SCRIPTS or script.startswith(("bash scripts/", "bash bench/")), \
        f"no handler for README command: {cmd}"
    if script == "bash bench/gpu_check.sh":
        from bench.gpu_check import build_parser as gpu_check_parser

        gpu_check_parser().parse_args(args)
    if script.startswith("bash "):
        assert (REPO_ROOT / script.split()[1]).is_file()
        return
    parse_script_args(script, args)  # argparse errors exit


def parse_script_args(script: str, args: list[str]) -> None:
    if script == "validation_and_test/test.py":
        from validation_and_test.test import build_parser

        build_parser().parse_args(args)
    elif script == "training/train.py":
        from training.train import get_args_parser

        parsed = get_args_parser().parse_intermixed_args(args)
        load_train_config(parsed.config, parsed.overrides)  # the preset and overrides are valid
    elif script == "validation_and_test/beamsearch.py":
        from validation_and_test.beamsearch import build_parser as beam_parser

        beam_parser().parse_args(args)
    elif script == "validation_and_test/match.py":
        from validation_and_test.match import build_parser as match_parser

        match_parser().parse_args(args)
    elif script == "scripts/ablation.py":
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("ablation_readme", REPO_ROOT / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        parsed = module.build_parser().parse_args(args)
        from experiments.runs import TRAIN_PRESET

        load_train_config(TRAIN_PRESET, parsed.overrides)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.startswith("bash scripts/download")])
def test_download_commands_dry_run(cmd, tmp_path):
    args = shlex.split(cmd) + ["--dry-run"]
    if "download_datasets" in cmd and "--root" not in args:
        args += ["--root", str(tmp_path / "Datasets_SCOT")]
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "PYTHON": str(Path(torch.__file__).parents[4] / "bin" / "python")})
    assert proc.returncode == 0, proc.stderr
    assert "http" in proc.stdout + proc.stderr
    assert not (tmp_path / "Datasets_SCOT").exists() or not any((tmp_path / "Datasets_SCOT").iterdir())


# ------------------------------------------------------------------------------ tiny-size runs
def _eval_commands(weights_kind: str) -> list[str]:
    out = []
    for c in COMMANDS:
        script, args = split_command(c)
        if script != "validation_and_test/test.py":
            continue
        is_imagenet = "--weights" not in args or args[args.index("--weights") + 1] == "imagenet"
        if (weights_kind == "imagenet") == is_imagenet:
            out.append(c)
    return out


def _arg(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def _tiny_root(dataset: str, tmp_path: Path) -> Path:
    """A dataset root for `dataset`: generated PF-PASCAL / SPair fixtures, the real PF-WILLOW."""
    if dataset == "pfpascal":
        return write_pascal(tmp_path / "pascal")
    if dataset == "spair":
        root = tmp_path / "spair"
        for split in ("trn", "val", "test"):
            write_spair(root, spair_pairs([("2008_000001", "2008_000002", "aeroplane"),
                                       ("2008_000002", "2008_000001", "aeroplane")]), split=split)
        return root
    if not (SHARED_REALDATA / "PF-WILLOW").is_dir():
        pytest.skip("../shared/realdata is absent")
    return SHARED_REALDATA


def _random_checkpoint(path: Path, arch: str = "resnet50") -> Path:
    """A MoCo-layout checkpoint of seeded random weights (what training and facebookresearch/moco write)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=128)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    torch.save({"arch": arch, "state_dict": state}, path)
    return path


def _swap_weights(args: list[str], tmp_path: Path) -> list[str]:
    if "--weights" in args:
        i = args.index("--weights") + 1
        args = [*args[:i], str(_random_checkpoint(tmp_path / args[i])), *args[i + 1:]]
    return args


@pytest.mark.parametrize("cmd", _eval_commands("imagenet"))
def test_imagenet_eval_commands_fail_offline_in_one_line(cmd, tmp_path, monkeypatch):
    from validation_and_test.test import main

    monkeypatch.setenv("CC_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, args = split_command(cmd)
    root = _tiny_root(_arg(args, "--dataset", "pfpascal"), tmp_path)
    with pytest.raises(UserError, match="IMAGENET1K_V1") as err:
        main([*args, "--datapath", str(root), "--max-pairs", "1", "--device", "cpu",
              "--output-dir", str(tmp_path / "out")])
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", _eval_commands("checkpoint"))
def test_checkpoint_eval_commands_run_at_tiny_size(cmd, tmp_path):
    from validation_and_test.test import main

    _, args = split_command(cmd)
    args = _swap_weights(args, tmp_path)
    root = _tiny_root(_arg(args, "--dataset", "pfpascal"), tmp_path)
    out = tmp_path / "out"
    assert main([*args, "--datapath", str(root), "--max-pairs", "1", "--device", "cpu",
                 "--output-dir", str(out)]) == 0
    assert (out / "results.json").is_file() and (out / "per_pair.csv").is_file()


TINY_TRAIN = ["moco.arch=resnet18", "moco.queue_size=8", "moco.bn_splits=1", "batch_size=2",
              "pair_batch_size=2", "num_workers=0", "image_data.source=demo", "image_data.image_size=64",
              "pixel_data.image_size=64", "cycle.patch_size=32", "max_steps=1", "steps_per_epoch=1",
              "epochs=1", "init.kind=random", "log.progress=false", "log.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if split_command(c)[0] == "training/train.py"])
def test_train_commands_run_at_tiny_size(cmd, tmp_path):
    from training.config import load_train_config
    from training.train import get_args_parser, main

    _, args = split_command(cmd)
    parsed = get_args_parser().parse_intermixed_args(args)
    cfg = load_train_config(parsed.config, parsed.overrides)
    root = _tiny_root(cfg.pixel_data.dataset, tmp_path)
    split = "trn" if cfg.pixel_data.dataset != "pfwillow" else "test"
    argv = [a for a in args if a not in ("--output-dir", parsed.output_dir)]
    argv += ["--output-dir", str(tmp_path / "run"), *TINY_TRAIN, f"pixel_data.root={root}",
             f"pixel_data.split={split}"]
    if parsed.device.startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            main(argv)
        return
    assert main([*argv, "--device", "cpu"] if parsed.device == "auto" else argv) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in COMMANDS
                                 if split_command(c)[0] == "validation_and_test/beamsearch.py"])
def test_beamsearch_commands_run_at_tiny_size(cmd, tmp_path):
    from validation_and_test.beamsearch import main

    _, args = split_command(cmd)
    args = _swap_weights(args, tmp_path)
    root = _tiny_root(_arg(args, "--dataset", "pfpascal"), tmp_path)
    out = tmp_path / "search"
    argv = [*args, "--datapath", str(root), "--max-pairs", "1", "--beam", "1", "--depth", "1",
            "--bases", "2", "--device", "cpu", "--output-dir", str(out)]
    assert main(argv) == 0
    assert (out / "search.json").is_file()


def test_own_images_commands_run(tmp_path):
    """The README's "Your own images" commands, for real (outputs redirected to a temporary folder)."""
    scripts = ["scripts/sample_photos.py", "validation_and_test/match.py"]
    own = [c for c in COMMANDS if split_command(c)[0] in scripts]
    assert [split_command(c)[0] for c in own] == scripts
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    python = str(Path(torch.__file__).parents[4] / "bin" / "python")
    for cmd in own:
        args = [a.replace("runs/", f"{tmp_path}/") for a in shlex.split(cmd)[1:]]
        proc = subprocess.run([python, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "match" / "motorcycle"
    assert {p.name for p in out.iterdir()} >= {"matches.json", "matches.png", "warp.png"}
