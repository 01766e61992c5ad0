"""Distillation text and its batches: corpora from the offline packages, token blocks, the feature cache."""
