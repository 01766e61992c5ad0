"""Evaluation with lm-evaluation-harness: the model wrapper, the offline tasks, evaluation runs and their metrics."""
