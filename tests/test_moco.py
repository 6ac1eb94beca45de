"""MoCo branch: split-BN, shuffles, queue ring, momentum, logits, and Shuffle-BN under 2-process gloo DDP."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from configs.runtime import UserError
from models.moco import (
    MoCo,
    MoCoConfig,
    SplitBatchNorm,
    build_encoder,
    ddp_shuffle,
    ddp_unshuffle,
    local_shuffle,
    topk_accuracy_tensors,
)


def tiny_cfg(**kw) -> MoCoConfig:
    return MoCoConfig(**{"arch": "resnet18", "dim": 8, "queue_size": 12, **kw})


def test_split_bn_k1_equals_batchnorm_train_and_eval() -> None:
    torch.manual_seed(0)
    bn, sbn = nn.BatchNorm2d(5), SplitBatchNorm(5, num_splits=1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    sbn.load_state_dict(bn.state_dict())
    for _ in range(3):
        x = torch.randn(8, 5, 4, 4) * 3 + 1
        assert torch.allclose(bn(x), sbn(x), atol=1e-6)
    assert torch.allclose(bn.running_mean, sbn.running_mean)
    assert torch.allclose(bn.running_var, sbn.running_var)
    bn.eval()
    sbn.eval()
    x = torch.randn(3, 5, 4, 4)
    assert torch.allclose(bn(x), sbn(x), atol=1e-6)


def test_split_bn_k_groups_equal_independent_batchnorms() -> None:
    torch.manual_seed(1)
    k, x = 4, torch.randn(8, 3, 5, 5) * 2 + 0.5
    sbn = SplitBatchNorm(3, num_splits=k)
    out = sbn(x)
    means, vars_ = [], []
    for g in range(k):  # group g = samples g, g + k, ...
        bn = nn.BatchNorm2d(3)
        assert torch.allclose(out[g::k], bn(x[g::k]), atol=1e-5)
        means.append(bn.running_mean)
        vars_.append(bn.running_var)
    assert torch.allclose(sbn.running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(sbn.running_var, torch.stack(vars_).mean(0), atol=1e-6)
    sbn.eval()
    assert torch.allclose(sbn(x), F.batch_norm(x, sbn.running_mean, sbn.running_var, sbn.weight, sbn.bias))
    sbn.train()
    with pytest.raises(UserError):
        sbn(torch.randn(6, 3, 2, 2))


def test_shuffle_then_unshuffle_is_identity() -> None:
    x = torch.arange(24.0).reshape(6, 4)
    shuffled, unshuffle = local_shuffle(x, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, x) and torch.equal(shuffled[unshuffle], x)
    shuffled, unshuffle = ddp_shuffle(x, torch.Generator().manual_seed(0))  # one process: local slice = all
    assert torch.equal(ddp_unshuffle(shuffled, unshuffle), x)


@pytest.fixture(scope="module")
def small_moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo(tiny_cfg(queue_size=6, dim=4, momentum=0.9))


def test_queue_enqueue_and_wrap_around(small_moco) -> None:
    moco = small_moco
    moco.queue_ptr.zero_()
    keys = [torch.full((4, 4), float(i + 1)) for i in range(3)]
    moco.dequeue_and_enqueue(keys[0])
    assert moco.queue_ptr.item() == 4 and torch.all(moco.queue[:, :4] == 1)
    moco.dequeue_and_enqueue(keys[1])  # columns 4, 5, then wraps to 0, 1
    assert moco.queue_ptr.item() == 2
    assert moco.queue[0].tolist() == [2, 2, 1, 1, 2, 2]
    moco.dequeue_and_enqueue(keys[2])
    assert moco.queue_ptr.item() == 0 and moco.queue[0].tolist() == [2, 2, 3, 3, 3, 3]
    with pytest.raises(UserError):
        moco.dequeue_and_enqueue(torch.zeros(7, 4))


def test_queue_init_from_generator_normalised(small_moco) -> None:
    small_moco.queue_ptr.fill_(3)
    small_moco.reset_queue(torch.Generator().manual_seed(4))
    first = small_moco.queue.clone()
    small_moco.reset_queue(torch.Generator().manual_seed(4))
    assert torch.equal(small_moco.queue, first) and first.shape == (4, 6)
    assert torch.allclose(first.norm(dim=0), torch.ones(6)) and small_moco.queue_ptr.item() == 0
    small_moco.reset_queue(torch.Generator().manual_seed(5))
    assert not torch.equal(small_moco.queue, first)


def test_momentum_update_and_key_encoder_frozen(small_moco) -> None:
    moco = small_moco
    assert all(not p.requires_grad for p in moco.encoder_k.parameters())
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(1.0)
    k_before = [p.clone() for p in moco.encoder_k.parameters()]
    moco.momentum_update()
    for pk, pk0, pq in zip(moco.encoder_k.parameters(), k_before, moco.encoder_q.parameters()):
        assert torch.allclose(pk, 0.9 * pk0 + 0.1 * pq, atol=1e-6)


def test_forward_logits_match_independent_computation() -> None:
    torch.manual_seed(0)
    moco = MoCo(tiny_cfg(bn_splits=2))
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue0 = moco.queue.clone()
    logits, labels = moco(im_q, im_k, torch.Generator().manual_seed(1))
    assert logits.shape == (4, 13) and logits.dtype == torch.float32 and labels.tolist() == [0, 0, 0, 0]
    q = F.normalize(copy.deepcopy(moco.encoder_q)(im_q), dim=1)
    # keys: the in-device shuffle of generator seed 1 decides the split-BN groups of the key batch
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(1))
    k = torch.empty(4, 8)
    k[perm] = F.normalize(copy.deepcopy(moco.encoder_k)(im_k[perm]), dim=1)
    assert torch.allclose(logits[:, 0], (q * k).sum(1) / 0.07, atol=1e-4)
    assert torch.allclose(logits[:, 1:], q @ queue0 / 0.07, atol=1e-4)
    assert torch.allclose(moco.queue[:, :4], k.T, atol=1e-5) and moco.queue_ptr.item() == 4


def test_mlp_head_keys_and_config_errors() -> None:
    keys = build_encoder("resnet18", dim=8, mlp=True).state_dict().keys()
    assert {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"} <= set(keys)
    assert "fc.weight" in build_encoder("resnet50", dim=128).state_dict()
    with pytest.raises(ValueError):
        MoCoConfig(arch="vgg16")
    with pytest.raises(ValueError):
        MoCoConfig(temperature=0.0)


def test_topk_accuracy_hand_example() -> None:
    logits = torch.tensor([[5.0, 1, 2, 3, 4, 0], [1, 5, 4, 3, 2, 0], [0, 1, 2, 3, 4, 5]])
    top1, top5 = topk_accuracy_tensors(logits, torch.zeros(3, dtype=torch.long), (1, 5))
    assert float(top1) == pytest.approx(100 / 3) and float(top5) == pytest.approx(200 / 3)


# ---------------------------------------------------------------- 2-process gloo DDP

def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical initial weights on both ranks
        moco = MoCo(tiny_cfg(), torch.Generator().manual_seed(0))
        model = DistributedDataParallel(moco)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(10 + rank)  # per-rank data and per-rank in-model generator
        gen = torch.Generator().manual_seed(100 + rank)
        record = {}
        for step in range(2):
            im_q, im_k = torch.randn(2, 3, 32, 32, generator=data), torch.randn(2, 3, 32, 32, generator=data)
            if step == 0:
                record["im_k"] = im_k
            logits, labels = model(im_q, im_k, gen)
            if step == 0:  # the key encoder that encoded this step's keys (after its momentum update)
                record["encoder_k_used"] = copy.deepcopy(moco.encoder_k)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                record["queue_after_first"] = moco.queue.clone()
        x = torch.arange(6.0).reshape(3, 2) + 10 * rank
        shuffled, unshuffle = ddp_shuffle(x, torch.Generator().manual_seed(rank))
        record.update(x=x, shuffled=shuffled, roundtrip=ddp_unshuffle(shuffled, unshuffle),
                      queue=moco.queue.clone(), ptr=moco.queue_ptr.clone(),
                      q_params={k: v.detach().clone() for k, v in moco.encoder_q.named_parameters()},
                      k_params=[p.clone() for p in moco.encoder_k.parameters()])
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10 s on an idle 2-core machine, much more when it is shared
def test_ddp_shuffle_bn_and_enqueue_two_gloo_processes(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert torch.equal(r0["queue"], r1["queue"]) and r0["ptr"].item() == r1["ptr"].item() == (2 * 4) % 12
    for k, v in r0["q_params"].items():  # DDP keeps the parameters in sync (BN running stats are per rank)
        assert torch.allclose(v, r1["q_params"][k], atol=1e-6), k
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(r0["k_params"], r1["k_params"]))
    # shuffle across ranks: round trip is the identity; the two local slices are a permutation of all rows
    assert torch.equal(r0["roundtrip"], r0["x"]) and torch.equal(r1["roundtrip"], r1["x"])
    rows = torch.cat([r0["shuffled"], r1["shuffled"]]).flatten().sort().values
    assert torch.equal(rows, torch.cat([r0["x"], r1["x"]]).flatten().sort().values)
    # first step's keys, recomputed: rank 0's permutation (seed 100) over the gathered key images, each
    # rank's slice encoded by its own (train-mode BN) key encoder, un-shuffled, in rank order in the queue.
    # The recomputation repeats the workers' float operations exactly (the encoders they used, one thread
    # as they ran), so the keys must be identical: no tolerance (BN over 2 samples of 1x1 layer4 maps would
    # amplify any rounding difference past any fixed bound)
    im_k = torch.cat([r0["im_k"], r1["im_k"]])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(100))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            keys = torch.empty(4, 8)
            for r, rec in enumerate((r0, r1)):
                rows = perm[2 * r:2 * r + 2]
                keys[rows] = F.normalize(rec["encoder_k_used"](im_k[rows]), dim=1)
            no_shuffle = torch.cat([F.normalize(rec["encoder_k_used"](im_k[2 * r:2 * r + 2]), dim=1)
                                    for r, rec in enumerate((r0, r1))])
    finally:
        torch.set_num_threads(threads)
    queued = r0["queue_after_first"][:, :4].T
    assert torch.equal(queued, keys)
    assert (queued - no_shuffle).abs().max() > 0.05  # the check above does see the BN batch composition
