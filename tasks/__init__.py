"""Flyte tasks: thin typed wrappers, one module per stage; the work is in deltabelief.pipeline."""

from tasks.schema_cache import install

install()  # before any task module types its interface
