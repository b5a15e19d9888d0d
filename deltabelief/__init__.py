"""deltabelief: ΔBelief-RL for information-seeking LLM agents."""

from deltabelief.threads import passive_openmp

# Before anything imports torch: waiting OpenMP threads sleep instead of spinning, so a shared
# laptop does not slow a step several-fold (deltabelief/threads.py).
passive_openmp()

__version__ = "0.1.0"
