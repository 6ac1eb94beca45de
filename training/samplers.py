"""Seeded, rank-disjoint, epoch-seeded samplers for the two training sources, resumable mid-epoch.

Every index stream is a pure function of (seed, epoch, rank, world_size), so a resumed run draws exactly
the indices an uninterrupted run would; `set_start(k)` skips the first k indices this rank already consumed.

- `ImageStreamSampler`: one seeded permutation of the image set per epoch; the first
  `world_size * per_rank` entries are dealt to ranks round-robin (rank r takes entries r, r + W, ...), the
  remainder is dropped (rank-disjoint, every rank the same length).
- `PairStreamSampler`: seeded permutations of the pair indices concatenated until the global stream holds
  `world_size * length` entries, sharded the same way; each pair repeats about equally often per epoch
  (the original's unseeded, rank-overlapping `ZipDataset` permutations, docs/method.md, Sampling, fixed).
- `MixedBatchSampler`: per step, a batch of image indices and a batch of pair indices (own batch sizes).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant to decorrelate seeds


def stream_seed(seed: int, epoch: int, salt: int) -> int:
    """A 63-bit seed derived from (seed, epoch, salt); distinct streams get distinct salts."""
    x = (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(salt) * 104_729) * _MIX
    return x % (2**63 - 1)


def _randperm(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)


class _ShardedStream(Sampler[int]):
    """Base: a global stream per epoch, rank r takes entries r, r + W, r + 2W, ...; resumable."""

    def __init__(self, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, consumed: int) -> None:
        """Skip the first `consumed` indices of this rank's stream (mid-epoch resume)."""
        self.start = int(consumed)

    def global_stream(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rank_stream(self) -> torch.Tensor:
        return self.global_stream()[self.rank::self.world_size][: self.length]

    @property
    def length(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return max(self.length - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_stream()[self.start:].tolist())


class ImageStreamSampler(_ShardedStream):
    """Permutation of `range(num_items)` per epoch, dealt round-robin to ranks, tail dropped."""

    SALT = 1

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        super().__init__(rank, world_size, seed)
        if num_items < world_size:
            raise ValueError(f"{num_items} images cannot be shared by {world_size} ranks")
        self.num_items = num_items

    @property
    def length(self) -> int:
        return self.num_items // self.world_size

    def global_stream(self) -> torch.Tensor:
        perm = _randperm(self.num_items, stream_seed(self.seed, self.epoch, self.SALT))
        return perm[: self.length * self.world_size]


class PairStreamSampler(_ShardedStream):
    """Seeded permutations of `range(num_pairs)` concatenated to `world_size * length`, sharded by rank."""

    SALT = 2

    def __init__(self, num_pairs: int, length: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        super().__init__(rank, world_size, seed)
        if num_pairs < 1:
            raise ValueError("the pair stream needs at least one pair")
        self.num_pairs, self._length = num_pairs, int(length)

    @property
    def length(self) -> int:
        return self._length

    def global_stream(self) -> torch.Tensor:
        total = self._length * self.world_size
        chunks = -(-total // self.num_pairs)
        perms = [_randperm(self.num_pairs, stream_seed(self.seed, self.epoch, self.SALT + 1000 * (c + 1)))
                 for c in range(chunks)]
        return torch.cat(perms)[:total] if perms else torch.empty(0, dtype=torch.long)


class MixedBatchSampler(Sampler[list[tuple[str, int]]]):
    """Per step, one batch of `batch_size` image indices and `pair_batch_size` pair indices from two streams.

    Yields lists of keys `("img", i)` then `("pair", j)` (for `TrainingSources`). `steps` per epoch;
    `set_start(step_in_epoch)` skips the batches already consumed, in both streams.
    """

    def __init__(self, images: ImageStreamSampler | None, pairs: PairStreamSampler, batch_size: int,
                 pair_batch_size: int, steps: int) -> None:
        n_images = images.length if images is not None else 0  # None: no image stream (batch_size 0)
        if n_images < steps * batch_size or pairs.length < steps * pair_batch_size:
            raise ValueError(f"streams too short for {steps} steps: images {n_images}, "
                             f"pairs {pairs.length}")
        self.images, self.pairs = images, pairs
        self.batch_size, self.pair_batch_size, self.steps = batch_size, pair_batch_size, steps
        self.start_step = 0

    def set_epoch(self, epoch: int) -> None:
        if self.images is not None:
            self.images.set_epoch(epoch)
        self.pairs.set_epoch(epoch)

    def set_start(self, step_in_epoch: int) -> None:
        self.start_step = int(step_in_epoch)
        if self.images is not None:
            self.images.set_start(self.start_step * self.batch_size)
        self.pairs.set_start(self.start_step * self.pair_batch_size)

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        img = iter(self.images) if self.images is not None else iter(())
        pair = iter(self.pairs)
        for _ in range(len(self)):
            yield ([("img", next(img)) for _ in range(self.batch_size)]
                   + [("pair", next(pair)) for _ in range(self.pair_batch_size)])
