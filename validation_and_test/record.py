"""The settings and identity part of every evaluation record (`results.json`, `search.json`).

One builder, so that the matching settings, resize rule, threshold type, weights identity, precision and
device are spelled out once for every file that reports a number.
"""

from __future__ import annotations

from typing import Any, Optional

from configs.runtime import git_sha, package_versions
from configs.schema import config_to_dict
from validation_and_test.config import EvalConfig
from validation_and_test.matcher import Matcher, MatchSettings


def matching_record(cfg: EvalConfig) -> dict[str, Any]:
    """Every setting that changes the matching: confidence, OT, CAM, similarity, resize rule, pruning."""
    st = MatchSettings.from_config(cfg)
    return {"matcher": st.matcher, "sim": st.label, "exp1": cfg.exp1, "exp2": cfg.exp2, "eps": cfg.eps,
            "sinkhorn_iters": cfg.sinkhorn_iters, "sinkhorn_solver": cfg.solver, "classmap": cfg.classmap,
            "similarity": cfg.similarity, "hpf": cfg.hpf, "resize_rule": st.resize_rule,
            "long_side": cfg.long_side, "prune_margin": cfg.hpf}


def settings_record(cfg: EvalConfig, *, thres: Optional[str], arch: str, weights: dict[str, Any],
                    numerics: dict[str, Any], preset: str, matcher: Optional[Matcher] = None
                    ) -> dict[str, Any]:
    """thres, backbone, weights identity, matching settings, device, precision, decoder, preset, the
    resolved config, git SHA and package versions; with `matcher`, also how the backbone is fed
    (`input_rule`) and how the OT marginals were made (`matching.marginals`)."""
    matching = matching_record(cfg)
    extra: dict[str, Any] = {}
    if matcher is not None:
        matching["marginals"] = matcher.cam_rule
        extra = {"input_rule": matcher.backbone.input_rule, "feature_cache_dir": cfg.feature_cache}
    return {"thres": thres, "backbone": arch, **extra, "weights": weights, "matching": matching,
            "device": numerics["device"], "precision": numerics["precision"],
            "layout": numerics.get("layout"), "fast": cfg.fast,
            "decoder": "pillow", "preset": preset, "config": config_to_dict(cfg), "git_sha": git_sha(),
            "versions": package_versions()}
