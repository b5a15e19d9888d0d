"""Flyte tasks: thin typed wrappers, one module per stage; the work is in deltabelief.pipeline."""
