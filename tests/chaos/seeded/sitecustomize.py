"""Seeds a detector process's random choices (fault tests only).

The detector draws its injected faults (FRAUDSTREAM_CHAOS_ABORT_RATE,
FRAUDSTREAM_CHAOS_COMMIT_TIMEOUT_RATE) from an unseeded `random.Random()`, and has no setting
to seed it. A fault test puts this directory on the PYTHONPATH of the processes it starts,
with FRAUDSTREAM_CHAOS_SEED set: Python imports this module at start-up, and from then on
every `random.Random()` made without a seed gets one derived from FRAUDSTREAM_CHAOS_SEED
(the seed, then a counter), so the same seed draws the same faults in the same order.
"""

from __future__ import annotations

import itertools
import os
import random
import sys

_SEED = os.environ.get("FRAUDSTREAM_CHAOS_SEED")

if _SEED:
    _made = itertools.count()
    _seed = random.Random.seed

    def _seeded(self: random.Random, a: object = None, version: int = 2) -> None:
        if a is None:
            a = f"{_SEED}/{next(_made)}"
        _seed(self, a, version)  # type: ignore[arg-type]

    random.Random.seed = _seeded  # type: ignore[method-assign]
    print(f"FRAUDSTREAM_CHAOS_SEED={_SEED}: unseeded random.Random() seeded", file=sys.stderr)
