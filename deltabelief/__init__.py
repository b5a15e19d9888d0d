"""deltabelief: ΔBelief-RL for information-seeking LLM agents."""

__version__ = "0.1.0"
