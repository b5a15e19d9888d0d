"""Plug-ins for outside training frameworks (``verl`` for the GPU Ray path).

Importing :mod:`deltabelief` never imports these; each sub-package imports its framework itself.
"""
