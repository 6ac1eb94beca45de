"""Config system: typed loading, unknown keys / bad types named, overrides, inheritance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from configs.runtime import UserError
from configs.schema import build_config, config_to_dict, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 0.003
    milestones: tuple[int, ...] = (5, 10, 15)
    mode: Literal["step", "cosine"] = "step"


@dataclass
class Toy:
    name: str
    optim: Optim = field(default_factory=Optim)
    ids: list[int] = field(default_factory=lambda: [2, 12])
    seed: Optional[int] = None
    amp: bool = False
    clip: Optional[float] = None
    alphas: list[float] = field(default_factory=lambda: [0.1])


def test_build_nested_and_defaults():
    cfg = build_config(Toy, {"name": "x", "optim": {"lr": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == (5, 10, 15) and cfg.ids == [2, 12] and cfg.seed is None


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"name": "x", "optim": {"lrr": 1}}, "optim.lrr"),
        ({"name": "x", "bogus": 1}, "'bogus'"),
        ({"name": "x", "optim": {"lr": "fast"}}, "optim.lr"),
        ({"name": "x", "amp": "yes"}, "amp"),
        ({"name": "x", "ids": [1, "a"]}, "ids[1]"),
        ({"name": "x", "optim": {"mode": "linear"}}, "optim.mode"),
        ({}, "missing required config key 'name'"),
        ({"name": "x", "optim": {"lr": float("nan")}}, "'optim.lr' must be a finite number, got nan"),
        ({"name": "x", "clip": float("inf")}, "'clip' must be a finite number, got inf"),
        ({"name": "x", "alphas": [0.1, -float("inf")]}, "'alphas[1]' must be a finite number"),
    ],
)
def test_errors_name_the_key(data, needle):
    with pytest.raises(UserError) as err:
        build_config(Toy, data, source="t.yaml")
    assert needle in str(err.value) and "t.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_and_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\noptim:\n  lr: 0.1\n  mode: cosine\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: 0.2\n")
    cfg = load_config(Toy, tmp_path / "child.yaml", ["optim.milestones=[1, 2]", "seed=7", "amp=true"])
    assert cfg.name == "base" and cfg.optim.lr == 0.2 and cfg.optim.mode == "cosine"
    assert cfg.optim.milestones == (1, 2) and cfg.seed == 7 and cfg.amp is True
    assert config_to_dict(cfg)["optim"]["milestones"] == [1, 2]


def test_bad_override_and_missing_file(tmp_path):
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    with pytest.raises(UserError, match="key.sub=value"):
        parse_overrides(["novalue"])
    with pytest.raises(UserError, match="not found"):
        load_config(Toy, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(Toy, tmp_path / "bad.yaml")
