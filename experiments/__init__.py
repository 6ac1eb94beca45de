"""Experiments as functions: initial weights, the offline stage 1, BN re-estimation runs, evaluating a
checkpoint, the ablation rows and their tables. Imports `training` and `validation_and_test` as libraries;
the scripts in `scripts/` are thin CLIs over it (none imports another script or a CLI's `main`)."""
