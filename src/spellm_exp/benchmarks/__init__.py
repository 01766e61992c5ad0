"""Measurements: the decode-step bench (teacher vs SpeLLM, same loop), the distillation bench, the memory
plan, and what they share (device, clocks, peak memory, parameter counts)."""
