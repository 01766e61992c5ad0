"""The method, with no Lightning or Hydra: alphabets and spelling tables, the k character heads, the losses,
the SpeLLM (a teacher's backbone + heads), scoring text with it, and the one decode loop."""
