"""Datasets: benchmark pairs (PF-PASCAL, PF-WILLOW, SPair-71k, demo) and ImageNet."""

from data import demo, pfpascal, pfwillow, spair  # noqa: F401  (register the datasets)
from data.pairs import UnlabelledPairs, collate_pairs
from data.registry import DATASETS, PairDataset, build_dataset

__all__ = ["DATASETS", "PairDataset", "UnlabelledPairs", "build_dataset", "collate_pairs"]
