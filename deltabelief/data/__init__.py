"""Datasets: target synthesis, outside formats and the built-in knowledge bases."""
