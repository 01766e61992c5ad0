"""Evaluation with lm-evaluation-harness: the model wrapper and the offline task definitions."""
