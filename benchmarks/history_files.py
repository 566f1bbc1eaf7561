"""What the generator scripts (`finforge_stream.py`, `synccfd_stream.py`) share: the label
delay, and writing a history in fraudstream's format with a summary. Imports nothing of
fraudstream's or the generators': it runs in .venv-gen.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

LABEL_DELAY_MS = 7 * 86_400_000  # a verdict is known a week after the payment (a chargeback)


def write_history(
    out_dir: Path, name: str, txs: list[dict[str, Any]], labels: list[dict[str, Any]], began: float
) -> None:
    """OUT_DIR/NAME.jsonl and NAME-labels.jsonl as JSON lines; then the fraud count, its share
    and each scenario's, and how long it took since `began` (time.monotonic())."""
    if len({t["id"] for t in txs}) != len(txs):
        raise SystemExit(f"{name} gave duplicate transaction ids")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, rows in (
        (out_dir / f"{name}.jsonl", txs),
        (out_dir / f"{name}-labels.jsonl", labels),
    ):
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
    frauds = Counter(lab["scenario"] for lab in labels if lab["is_fraud"])
    n, n_fraud = len(txs), sum(frauds.values())
    print(f"fraud: {n_fraud} ({n_fraud / max(n, 1):.2%})")
    for scenario, k in sorted(frauds.items()):
        print(f"  {scenario}: {k} ({k / max(n, 1):.2%})")
    print(
        f"wrote {out_dir}/{name}.jsonl and {name}-labels.jsonl in {time.monotonic() - began:.0f} s"
    )
