"""Pipelines: the science behind each command (read inputs, call core, write outputs)."""
