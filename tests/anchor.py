"""Where the tests find the shared reference data (read in place, never copied into the repo).

Default: the ``shared/anchor_data`` folder beside the repository, as in the workspace and CI
checkouts; a clone elsewhere sets ``DELTABELIEF_ANCHOR_DATA``.
"""

from __future__ import annotations

import os
from pathlib import Path

ANCHOR_DATA = Path(os.environ.get("DELTABELIEF_ANCHOR_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "anchor_data"))
REFERENCE_DATA = ANCHOR_DATA / "delta_belief_rl"
