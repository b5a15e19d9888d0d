"""Datasets: targets and their splits, teacher players, outside formats, data contracts and the built-in
knowledge bases (the synthesis stage that writes them is :mod:`deltabelief.synthesis`)."""
