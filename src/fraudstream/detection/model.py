"""The trained model: a versioned file, loaded once, scoring whole batches at a time.

model = FraudModel.load(Path("models/default.model"))
probabilities = model.score(rows)       # rows: feature rows + rule hit flags, one per tx
model.threshold                         # fraud at or above this probability (chosen in training)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraudstream.detection.trees import CompiledTrees
from fraudstream.errors import FraudstreamError

__all__ = ["MODEL_FORMAT", "FraudModel", "ModelError", "limit_native_threads"]

MODEL_FORMAT = 2  # 2: the fraud threshold chosen at training is part of the file
# The trees' smallest leaf (HistGradientBoosting's `min_samples_leaf`; `train` passes this
# one): a rule with fewer hits on the training days cannot have a leaf of its own, so the
# model cannot have learned what its hit means.
MIN_LEAF = 20


_limits: list[Any] = []  # the process-wide limit, kept alive


def limit_native_threads(threads: int, *, model: bool = True) -> None:
    """Cap the native thread pools (OpenMP, BLAS) of this process at `threads` each
    (threadpoolctl sets the libraries loaded, so load them all first). Without a model
    only numpy's are loaded: scipy and scikit-learn (about 60 MB) stay out of the process."""
    if model:
        import scipy.linalg  # noqa: F401 (scipy's BLAS)
        import sklearn.utils._openmp_helpers  # noqa: F401 (scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_limits

    _limits.append(threadpool_limits(limits=threads))


class ModelError(FraudstreamError):
    """A model file cannot be used."""


@dataclass
class FraudModel:
    """A classifier plus what it was trained on: feature names, rule ids, version, the fraud
    threshold chosen on the validation days (and the target it met, in `info`), metrics."""

    estimator: Any
    feature_names: tuple[str, ...]
    rule_ids: tuple[str, ...]
    version: str
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._compiled = CompiledTrees.of(self.estimator)

    def unlearned(self, rule_ids: tuple[str, ...]) -> frozenset[str]:
        """Of these rules, those the model cannot have learned: not among its inputs (added
        after it was trained), or with fewer than `MIN_LEAF` hits on its training days
        (`info["rule_hits"]`; a model file without that count: all its inputs learned)."""
        hits: dict[str, int] = self.info.get("rule_hits", {})
        known = set(self.rule_ids)
        return frozenset(r for r in rule_ids if r not in known or hits.get(r, MIN_LEAF) < MIN_LEAF)

    def score(
        self, rows: list[list[float]] | np.ndarray[Any, Any]
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Fraud probability for each row, the whole batch in one compiled call (the same
        numbers as the estimator's own `predict_proba`)."""
        if len(rows) == 0:
            return np.zeros(0)
        x = np.asarray(rows, dtype=np.float32)  # the precision the model was trained at
        if self._compiled is not None:
            return self._compiled.predict_proba(x.astype(np.float64))
        return self.estimator.predict_proba(x)[:, 1]  # type: ignore[no-any-return]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": MODEL_FORMAT,
            "estimator": self.estimator,
            "feature_names": self.feature_names,
            "rule_ids": self.rule_ids,
            "version": self.version,
            "threshold": self.threshold,
            "info": self.info,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FraudModel:
        """Load a model file. Only load files you trained: the format is a Python pickle."""
        try:
            blob = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ModelError(
                f"cannot load model {path}: {exc}; retrain with `fraudstream train`"
            ) from None
        if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
            raise ModelError(
                f"{path} is not a fraudstream model of format {MODEL_FORMAT}; "
                "retrain it with `fraudstream train`"
            )
        return cls(
            blob["estimator"],
            tuple(blob["feature_names"]),
            tuple(blob["rule_ids"]),
            blob["version"],
            float(blob["threshold"]),
            blob.get("info", {}),
        )
