"""Distillation text: training splits only, read from the offline data packages."""
