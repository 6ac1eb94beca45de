"""Datasets: benchmark pairs (PF-PASCAL, PF-WILLOW, SPair-71k, demo) and ImageNet."""
