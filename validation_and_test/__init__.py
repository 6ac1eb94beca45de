"""Evaluation: SCOT-style matching, keypoint transfer, PCK, layer search."""
