"""The combined model: image-level MoCo + pixel-level cycle branch sharing the query encoder.

API (stable; the training loop calls it):

    model = ContrastiveCorrespondence(MoCoConfig(...), CycleConfig(...), generator=queue_init_generator)
    out = model(im_q, im_k, src, trg, generator, return_vis=False)
    out["loss"].backward()      # = the sum of out["terms"].values()

`out["terms"]` holds the weighted loss of each branch: "moco" = moco.loss_weight * loss_moco, "pixel" =
cycle.loss_weight * loss_cycle (+ cycle.centre_loss_weight * loss_centre); the training loop takes
per-term gradients from it. The other entries are 0-dim tensors: "loss", "loss_moco", "loss_cycle"
(unweighted terms), "moco_top1", "moco_top5" (percent), "cycle_valid_fraction", "cycle_max_prob_crop_trg",
"cycle_max_prob_trg_src", "cycle_error_px", "cycle_centre_baseline" (and "loss_centre" when its weight is
> 0); plus "vis" (dict, see `models.cycle.CycleResult`) when return_vis. Either branch may be skipped by
passing None for its images (im_q/im_k, or src/trg), or is skipped when its loss weight is 0; its terms
are then absent from `out`.

The model subclasses `MoCo`, so its state dict has exactly the checkpoint layout `encoder_q.*`,
`encoder_k.*`, `queue`, `queue_ptr` (`module.` added by DDP). Random draws, from `generator` (per rank):
the MoCo key shuffle first (under DDP rank 0's draw is broadcast), then the cycle branch's flip, rotation
(and jitter). A generator seeded from (seed, step, rank) makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from configs.runtime import UserError
from models.cycle import CycleConfig, check_encoder, cycle_loss
from models.moco import MoCo, MoCoConfig, topk_accuracy_tensors
from models.timm_models import is_vit


class ContrastiveCorrespondence(MoCo):
    """MoCo (encoder_q, encoder_k, queue) + the pixel-level cycle loss computed with encoder_q."""

    def __init__(self, moco_cfg: MoCoConfig, cycle_cfg: CycleConfig,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(moco_cfg, generator)
        self.cycle_cfg = cycle_cfg
        check_encoder(self.encoder_q, cycle_cfg, moco_cfg.arch)  # fail early on settings that do not fit
        if is_vit(self.encoder_q) and moco_cfg.loss_weight > 0:
            raise UserError(f"moco.arch={moco_cfg.arch} is a ViT: the MoCo branch is for ResNets; "
                            f"set moco.loss_weight=0 (pixel-level branch only)")

    def forward(self, im_q: Optional[torch.Tensor], im_k: Optional[torch.Tensor], src: Optional[torch.Tensor],
                trg: Optional[torch.Tensor], generator: torch.Generator,
                return_vis: bool = False) -> dict[str, Any]:
        """im_q, im_k: (B, 3, H, W) ImageNet views; src, trg: (B', 3, S, S) pairs. See the module doc."""
        out: dict[str, Any] = {}
        terms: dict[str, torch.Tensor] = {}
        mw, cw = self.moco_cfg.loss_weight, self.cycle_cfg.loss_weight
        if im_q is not None and im_k is not None and mw != 0:
            logits, labels = super().forward(im_q, im_k, generator)
            loss_moco = F.cross_entropy(logits, labels)
            top1, top5 = topk_accuracy_tensors(logits, labels, (1, 5))
            out.update(loss_moco=loss_moco, moco_top1=top1, moco_top5=top5)
            terms["moco"] = mw * loss_moco
        if src is not None and trg is not None and cw != 0:
            res = cycle_loss(self.encoder_q, src, trg, self.cycle_cfg, generator, return_vis=return_vis,
                             bn_groups=self.moco_cfg.bn_splits)
            out["loss_cycle"] = res.loss
            out.update(res.stats)
            if res.vis is not None:
                out["vis"] = res.vis
            terms["pixel"] = cw * res.loss
            if res.centre_loss is not None:
                terms["pixel"] = terms["pixel"] + self.cycle_cfg.centre_loss_weight * res.centre_loss
        if not terms:
            raise UserError("ContrastiveCorrespondence: no branch to run (pass im_q/im_k and/or src/trg, "
                            "with a non-zero moco.loss_weight / cycle.loss_weight)")
        out["terms"] = terms
        out["loss"] = sum(terms.values())
        return out
