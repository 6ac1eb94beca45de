"""The training loop (sectioned like DINO's): data / networks / loss / optimizer / schedule / resume / loop.

    summary = train(cfg, output_dir, resume="auto", device="auto", preset="configs/demo.yaml")

Exact resume: data augmentation draws are functions of (seed, epoch, sample index) (the datasets), the
samplers are functions of (seed, epoch, rank) and skip consumed batches, and in-model draws (key shuffle,
flip, rotation) come from a generator seeded from (seed, step, rank) (`step_generator`). Nothing relies on
restored RNG streams, so a run killed and resumed from a checkpoint equals one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from configs.runtime import (
    DistInfo,
    UserError,
    atomic_write_json,
    barrier,
    get_logger,
    init_distributed,
    release_output_dir,
    seed_everything,
    set_faithful_numerics,
    synchronize,
    write_run_metadata,
)
from configs.schema import config_to_dict
from models.contrastive import ContrastiveCorrespondence
from training.checkpoint import (
    build_checkpoint,
    init_from_checkpoint,
    read_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from training.config import TrainConfig
from training.gradients import accumulate_term_gradients, all_reduce_gradients
from training.health import ChanceWatch, setup_warnings
from training.loader import TrainingData, build_training_data
from training.metrics import MetricsLogger
from training.run_dir import open_run_folder
from training.samplers import stream_seed
from training.schedule import build_lr_schedule

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_KEYS = ("loss", "loss_moco", "loss_cycle")


class NonFiniteLoss(UserError):
    """Raised (on every rank) when a loss is NaN or infinite; the message names the step and the terms."""


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The in-model generator of global step `step` on `rank` (key shuffle, flip, rotation, jitter)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, step, 1000 + rank))
    return gen


def queue_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, 0, 7))


def ddp_find_unused_parameters(cfg: TrainConfig) -> bool:
    """DDP must look for unused parameters when a branch is off: the cycle branch alone leaves layer4 and
    fc of the query encoder without gradient (the released code always passed True)."""
    return cfg.moco.loss_weight == 0 or cfg.cycle.loss_weight == 0


def _non_finite_flag(out: dict[str, Any], info: DistInfo) -> torch.Tensor:
    """(1,) tensor on the device, > 0 iff any rank saw a non-finite loss term (so all stop together).

    No host synchronisation here: the caller reads it once at the end of the step."""
    terms = torch.stack([out[k].detach().float() for k in LOSS_KEYS if k in out])
    bad = (~torch.isfinite(terms)).any().float().reshape(1)
    if info.distributed:
        dist.all_reduce(bad)
    return bad


def _mean_across_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def train(cfg: TrainConfig, output_dir: str | Path | None = None, resume: str | None = None,
          device: str = "auto", preset: str | Path | None = None,
          info: DistInfo | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue) training; returns a summary dict (final step, last metrics, checkpoint path)."""
    info = info or init_distributed(device)
    log = get_logger("train", info)
    name = cfg.run_name(preset)
    out_dir = Path(output_dir) if output_dir else Path("runs") / name
    ckpt_dir = out_dir / "checkpoints"
    run = open_run_folder(out_dir, resume, overwrite, cfg.checkpoint.keep_last, info, log)  # run_dir.py rules
    seed_everything(cfg.seed)
    numerics = set_faithful_numerics(info.device, cfg.fast)  # no TF32 unless cfg.fast
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------------------------ data
    data: TrainingData = build_training_data(cfg, info)
    steps_per_epoch = data.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
    if data.pair_overlap:
        log.info("pixel data %s/%s: %s", cfg.pixel_data.dataset, cfg.pixel_data.split, data.pair_overlap)
    if cfg.pixel_data.transductive:
        log.info("TRANSDUCTIVE run: the pixel branch trains on the %s test pairs (label-free)",
                 cfg.pixel_data.dataset)
    for msg in setup_warnings(cfg, info.world_size, data.num_images):
        log.warning(msg)
    chance_watch = ChanceWatch(cfg.moco.queue_size)

    # -------------------------------------------------------------------------------------- networks
    model = ContrastiveCorrespondence(cfg.moco, cfg.cycle, generator=queue_generator(cfg.seed))
    resume_path = run.resume_path
    init_report = None
    if resume_path is None and cfg.init.kind == "checkpoint":
        init_report = init_from_checkpoint(model, cfg.init.checkpoint, load_queue=cfg.init.load_queue)
        log.info(init_report.summary())
    timm_init = None
    if resume_path is None and cfg.init.kind == "timm":
        from models.timm_models import init_from_timm

        timm_init = init_from_timm(model, cfg.moco.arch)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------ optimizer, AMP
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    amp_dtype = AMP_DTYPES.get(cfg.amp)

    # -------------------------------------------------------------------------------------- schedule
    lrs = build_lr_schedule(cfg.optim.schedule, cfg.optim.lr, cfg.epochs, steps_per_epoch,
                            cfg.optim.milestones, cfg.optim.gamma, cfg.optim.warmup_epochs,
                            cfg.optim.final_lr)

    # ---------------------------------------------------------------------------------------- resume
    step = 0
    if resume_path is not None:
        ckpt = read_checkpoint(resume_path)
        _, step = restore_training_state(ckpt, model, optimizer, scaler, resume_path)
        model.to(info.device)
        log.info("resumed from %s at step %d", resume_path, step)
    config_dict = config_to_dict(cfg)
    if resume_path is not None:
        changed = _changed_keys(ckpt.get("config", {}), config_dict)
        if changed:
            log.warning("resuming with a config that differs from the checkpoint in: %s", ", ".join(changed))
    init_record = ({"resumed_from": str(resume_path)} if resume_path is not None else
                   init_report.as_dict() if init_report is not None else
                   timm_init or {"kind": "random", "seed": cfg.seed})
    run_info = {"name": name, "transductive": cfg.pixel_data.transductive,
                "pixel_data": f"{cfg.pixel_data.dataset}/{cfg.pixel_data.split}",
                "world_size": info.world_size, "per_rank_batch": cfg.batch_size,
                "global_batch": cfg.batch_size * info.world_size, "pair_batch_per_rank": cfg.pair_batch_size,
                "bn_splits": cfg.moco.bn_splits, "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "num_images": data.num_images, "num_pairs": data.num_pairs, "pair_overlap": data.pair_overlap,
                "device": str(info.device), "amp": cfg.amp, "precision": numerics["precision"],
                "init": init_record}
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_metadata(out_dir, config_dict)
        atomic_write_json(out_dir / ("run.json" if resume_path is None else f"run_resume_{step:07d}.json"),
                          run_info)
    logger = MetricsLogger(out_dir, info, last_step, step, cfg.log.tensorboard, cfg.log.progress)
    net = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids,
                                      find_unused_parameters=ddp_find_unused_parameters(cfg))

    def save(epoch_of_next: int) -> Path | None:
        path = None
        if info.is_main:
            ckpt = build_checkpoint(model, cfg.moco.arch, optimizer, scaler, epoch_of_next, step, config_dict)
            path = save_checkpoint({**ckpt, "run_id": run.run_id}, ckpt_dir, cfg.checkpoint.keep_last)
        barrier(info)
        return path

    # ------------------------------------------------------------------------------------------ loop
    model.train()
    window: dict[str, Any] = {}
    n_window = 0
    last_record: dict[str, Any] = {}
    last_path = None
    start_epoch = step // steps_per_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if step >= last_step:
                break
            data.start_epoch(epoch, step - epoch * steps_per_epoch)
            t_data = time.perf_counter()
            for batch in data.loader:
                data_time = time.perf_counter() - t_data
                t_compute = time.perf_counter()
                lr = lrs[step]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
                if cfg.channels_last:
                    batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                             for k, v in batch.items()}
                vis_now = info.is_main and cfg.log.vis_interval > 0 and (step + 1) % cfg.log.vis_interval == 0
                gen = step_generator(cfg.seed, step, info.rank, info.device)
                autocast = torch.autocast(info.device.type, dtype=amp_dtype or torch.float32,
                                          enabled=amp_dtype is not None)
                # per-term gradients replace DDP's own reduction: no sync in the forward, one all-reduce after
                with autocast, (net.no_sync() if info.distributed else contextlib.nullcontext()):
                    out = net(batch.get("im_q"), batch.get("im_k"), batch.get("src"), batch.get("trg"), gen,
                              return_vis=vis_now)
                bad = _non_finite_flag(out, info)
                inv_scale = 1.0 / scaler.get_scale() if scaler.is_enabled() else 1.0
                norms = accumulate_term_gradients({k: scaler.scale(v) for k, v in out.pop("terms").items()},
                                                  params, cfg.optim.clip_grad_norm_per_term, inv_scale)
                out.update({f"grad_norm_{k}": v for k, v in norms.items()})
                all_reduce_gradients(params, info.world_size)
                if cfg.optim.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                # the step's one host sync (also ends the compute timing); a non-finite step is never saved
                if bad.item() > 0:
                    terms = ", ".join(f"{k}={out[k].item():.6g}" for k in LOSS_KEYS if k in out)
                    raise NonFiniteLoss(f"non-finite loss at step {step} (epoch {epoch}): {terms}; "
                                        f"lower optim.lr or check the data (run folder {out_dir})")
                synchronize(info.device)
                compute_time = time.perf_counter() - t_compute
                step += 1

                for k, v in out.items():  # summed on the device; read back at log steps only
                    if torch.is_tensor(v) and v.dim() == 0:
                        window[k] = window.get(k, 0.0) + v.detach().float()
                window["data_time"] = window.get("data_time", 0.0) + data_time
                window["compute_time"] = window.get("compute_time", 0.0) + compute_time
                n_window += 1
                if vis_now and "vis" in out:
                    from training.visualize import cycle_figure, write_png

                    figure = cycle_figure(out["vis"])
                    write_png(figure, out_dir / "vis" / f"step_{step:07d}.png")
                    logger.add_image("train/pixel_level", figure, step)  # TensorBoard: Images tab
                if step % cfg.log.interval == 0 or step == last_step:
                    means = _mean_across_ranks({k: float(v) / n_window for k, v in window.items()}, info)
                    per_step = means["data_time"] + means["compute_time"]
                    last_record = {"step": step, "epoch": epoch, "lr": lr, **means,
                                   "images_per_s": cfg.batch_size * info.world_size / max(per_step, 1e-9),
                                   "pairs_per_s": cfg.pair_batch_size * info.world_size / max(per_step, 1e-9)}
                    if "loss_moco" in means:
                        last_record["moco_chance_loss"] = chance_watch.chance
                    logger.log(last_record)
                    msg = chance_watch.update(means.get("loss_moco"))
                    if msg:
                        log.warning(msg)
                    window, n_window = {}, 0
                logger.advance()
                end_of_epoch = step % steps_per_epoch == 0
                if step % cfg.checkpoint.every_steps == 0 or end_of_epoch or step == last_step:
                    last_path = save(step // steps_per_epoch)
                if step >= last_step:
                    break
                t_data = time.perf_counter()
    finally:
        logger.close()
        if info.is_main:
            release_output_dir(out_dir)  # taken by open_run_folder
    return {"step": step, "output_dir": str(out_dir), "checkpoint": str(last_path) if last_path else None,
            "last_metrics": last_record, "run": run_info, "finite": all(
                math.isfinite(v) for k, v in last_record.items() if k in LOSS_KEYS and isinstance(v, float))}
