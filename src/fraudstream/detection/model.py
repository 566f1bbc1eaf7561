"""The trained model: a versioned file, loaded once, scoring whole batches at a time.

model = FraudModel.load(Path("models/default.model"))
probabilities = model.score(rows)       # rows: feature rows + rule hit flags, one per tx
model.threshold                         # fraud at or above this probability (chosen in training)

The file keeps the fitted trees twice: flattened into arrays (`CompiledTrees`, what scoring
reads) and the estimator's own pickle, unpickled only when asked for (`estimator`). Loading and
scoring a model therefore imports neither scikit-learn nor scipy.special (most of a second and
about 80 MB of every detector start with a model); an estimator the kernel does not cover is
unpickled at load.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fraudstream.detection.trees import CompiledTrees
from fraudstream.errors import FraudstreamError

__all__ = [
    "MODEL_FORMAT",
    "FraudModel",
    "ModelError",
    "limit_native_threads",
    "load_kernels_in_background",
]

# 2: the fraud threshold chosen at training is part of the file; 3: the compiled trees too,
# and the estimator as a pickle of its own (loaded on demand). Both are read.
MODEL_FORMAT = 3
_READ_FORMATS = (2, 3)
# The trees' smallest leaf (HistGradientBoosting's `min_samples_leaf`; `train` passes this
# one): a rule with fewer hits on the training days cannot have a leaf of its own, so the
# model cannot have learned what its hit means.
MIN_LEAF = 20


_limits: list[Any] = []  # the process-wide limits, kept alive
_threads: list[int] = []  # the limit asked for (set once `limit_native_threads` ran)


def limit_native_threads(threads: int, *, model: bool = True) -> None:
    """Cap the native thread pools (OpenMP, BLAS) of this process at `threads` each
    (threadpoolctl sets the libraries loaded, so load them first). `model`: load scipy's and
    scikit-learn's now (training, backtests); without it they stay out of the process (about
    80 MB), and a model that needs scikit-learn later applies the same cap when it loads it."""
    if model:
        import scipy.linalg  # noqa: F401 (scipy's BLAS)
        import sklearn.utils._openmp_helpers  # noqa: F401 (scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_limits

    _threads[:] = [threads]
    _limits.append(threadpool_limits(limits=threads))


def load_kernels_in_background() -> threading.Thread:
    """Make the process's first compiled-kernel call in a thread.

    That first call spends about 0.25 s loading numba's target: its registries of
    implementations, and scipy's BLAS module, which numba checks for. A detector's start
    spends about as long waiting on the broker, during which the thread has the interpreter
    (docs/performance.md, "The start's requests"). scipy's BLAS brings its own OpenBLAS with
    a pool of a thread per core, loaded after the process's first cap, which therefore missed
    it: once the thread is done, call `limit_native_threads` again from the thread that
    computes (OpenBLAS's setting does not carry across threads). A
    failure here is left to the first real call to report."""
    from fraudstream.detection.keyhash import key_hashes

    def run() -> None:
        with contextlib.suppress(Exception):  # (the first real call raises it again)
            key_hashes(["warm-up"])

    thread = threading.Thread(target=run, name="kernel-warm-up", daemon=True)
    thread.start()
    return thread


def _unpickle_estimator(blob: bytes) -> Any:
    """An estimator from its pickle, under the process's native thread cap."""
    estimator = pickle.loads(blob)
    _cap_again()
    return estimator


def _cap_again() -> None:
    """scikit-learn was loaded after `limit_native_threads`: cap its pools too."""
    if _threads:
        import sklearn.utils._openmp_helpers  # noqa: F401 (scikit-learn's OpenMP runtime)
        from threadpoolctl import threadpool_limits

        _limits.append(threadpool_limits(limits=_threads[0]))


class ModelError(FraudstreamError):
    """A model file cannot be used."""


@dataclass
class FraudModel:
    """A classifier plus what it was trained on: feature names, rule ids, version, the fraud
    threshold chosen on the validation days (and the target it met, in `info`), metrics."""

    fitted: Any  # the estimator, or its pickle (bytes) until asked for: use `estimator`
    feature_names: tuple[str, ...]
    rule_ids: tuple[str, ...]
    version: str
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)
    compiled: CompiledTrees | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.compiled is None:
            self.compiled = CompiledTrees.of(self.estimator)

    @property
    def estimator(self) -> Any:
        """The fitted classifier (unpickled on first use when the file carried it so)."""
        if isinstance(self.fitted, bytes):
            self.fitted = _unpickle_estimator(self.fitted)
        return self.fitted

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
        if self.compiled is not None:
            return self.compiled.predict_proba(x.astype(np.float64))
        return self.estimator.predict_proba(x)[:, 1]  # type: ignore[no-any-return]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fitted = self.fitted
        blob = {
            "format": MODEL_FORMAT,
            "estimator": fitted if isinstance(fitted, bytes) else _pickle(fitted),
            "trees": _arrays(self.compiled),
            "feature_names": self.feature_names,
            "rule_ids": self.rule_ids,
            "version": self.version,
            "threshold": self.threshold,
            "info": self.info,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(_pickle(blob))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FraudModel:
        """Load a model file. Only load files you trained: the format is a Python pickle."""
        try:
            blob = pickle.loads(path.read_bytes())
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from None
        if not isinstance(blob, dict) or blob.get("format") not in _READ_FORMATS:
            raise ModelError(
                f"{path} is not a fraudstream model of format {MODEL_FORMAT}; "
                "retrain it with `fraudstream train`"
            )
        fitted, trees = blob["estimator"], blob.get("trees")
        compiled = CompiledTrees(**trees) if trees is not None else None
        if not isinstance(fitted, bytes):  # format 2: unpickled with the file
            _cap_again()
        elif compiled is None:
            try:  # not covered by the kernel: scored by the estimator, so load it now
                fitted = _unpickle_estimator(fitted)
            except _UNREADABLE as exc:
                raise _unreadable(path, exc) from None
        return cls(
            fitted,
            tuple(blob["feature_names"]),
            tuple(blob["rule_ids"]),
            blob["version"],
            float(blob["threshold"]),
            blob.get("info", {}),
            compiled,
        )


# what unpickling a damaged or foreign file (or one of another scikit-learn) raises
_UNREADABLE = (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError)


def _unreadable(path: Path, exc: Exception) -> ModelError:
    return ModelError(f"cannot load model {path}: {exc}; retrain with `fraudstream train`")


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _arrays(trees: CompiledTrees | None) -> dict[str, Any] | None:
    """The compiled trees as plain values (numpy arrays and numbers): a file that loads
    without scikit-learn, and without this module's classes."""
    if trees is None:
        return None
    return {f.name: getattr(trees, f.name) for f in fields(trees)}
