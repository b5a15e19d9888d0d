"""Flyte workflows and launch plans."""
