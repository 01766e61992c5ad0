"""Experiments over many SpeLLMs: sweeps and ablations, their job records, and reuse / resume / distil."""
