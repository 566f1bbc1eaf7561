"""The compiled tree kernel gives the estimator's own probabilities, bit for bit; the model
file carries it, so that a detector loads a model without scikit-learn."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier

from fraudstream.detection.model import FraudModel
from fraudstream.detection.trees import CompiledTrees


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(40, 400),
    features=st.integers(1, 12),
    missing=st.sampled_from([0.0, 0.1, 0.5]),
    trees=st.integers(1, 40),
    leaves=st.integers(2, 31),
)
def test_compiled_trees_equal_predict_proba(
    seed: int, rows: int, features: int, missing: float, trees: int, leaves: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    x[rng.random(x.shape) < missing] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=rows) > 0.5).astype(int)
    y[:2] = [0, 1]  # both classes
    est = HistGradientBoostingClassifier(
        max_iter=trees, max_leaf_nodes=leaves, early_stopping=False, random_state=0
    ).fit(x, y)
    compiled = CompiledTrees.of(est)
    assert compiled is not None and compiled.trees == est.n_iter_
    # scored rows: fresh ones, with missing values, infinities and exact thresholds
    z = rng.normal(size=(200, features)).astype(np.float32)
    z[rng.random(z.shape) < 0.2] = np.nan
    z[rng.random(z.shape) < 0.05] = np.inf
    z[rng.random(z.shape) < 0.05] = -np.inf
    at = compiled.threshold[~compiled.leaf.astype(bool)]
    if at.size:
        cols = compiled.feature[~compiled.leaf.astype(bool)]
        for i in range(min(50, at.size)):
            z[i, cols[i]] = np.float32(at[i])
    expected = est.predict_proba(z)[:, 1]
    assert np.array_equal(compiled.predict_proba(z.astype(np.float64)), expected)
    model = FraudModel(est, tuple(f"f{i}" for i in range(features)), (), "t", 0.5)
    assert np.array_equal(model.score(z.tolist()), expected)


def test_what_it_cannot_compile_is_scored_by_the_estimator() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(200, 2)).astype(np.float32)
    y = (x[:, 0] == 2).astype(int)
    est = HistGradientBoostingClassifier(
        max_iter=5, categorical_features=[0], early_stopping=False
    ).fit(x, y)
    assert CompiledTrees.of(est) is None
    model = FraudModel(est, ("a", "b"), (), "t", 0.5)
    assert np.array_equal(model.score(x.tolist()), est.predict_proba(x)[:, 1])


def _fitted(categorical: bool = False) -> tuple[HistGradientBoostingClassifier, np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(300, 3)).astype(np.float32) + rng.random((300, 3), np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) > 2).astype(int)
    est = HistGradientBoostingClassifier(
        max_iter=8, categorical_features=[1] if categorical else None, early_stopping=False
    )
    if categorical:
        x[:, 1] = np.floor(np.nan_to_num(x[:, 1]))
    return est.fit(x, y), x


# A fresh interpreter loads the model file, caps native threads as the detector does, scores
# the rows and says whether it imported scikit-learn and scipy.special (numba's first kernel
# call loads scipy's BLAS wrappers whatever the model), and the OpenMP pools' sizes.
_LOAD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from fraudstream.detection.model import FraudModel, limit_native_threads
    limit_native_threads(1, model=False)
    model = FraudModel.load(Path(sys.argv[1]))
    p = model.score(np.load(sys.argv[2]))
    from threadpoolctl import threadpool_info
    print(json.dumps({
        "p": p.tolist(),
        "sklearn": "sklearn" in sys.modules,
        "scipy.special": "scipy.special" in sys.modules,
        "openmp": [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"],
    }))
    """
)


def _load_elsewhere(model_file: Path, x: np.ndarray, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    rows = tmp_path / "rows.npy"
    np.save(rows, x)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, str(model_file), str(rows)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_model_file_scores_without_scikit_learn(tmp_path: Path) -> None:
    """A saved model loads and scores in a process that never imports scikit-learn or
    scipy, with the estimator's own probabilities; asked for, the estimator is still there."""
    est, x = _fitted()
    model = FraudModel(est, ("a", "b", "c"), (), "t", 0.5)
    model.save(tmp_path / "m.model")
    seen = _load_elsewhere(tmp_path / "m.model", x, tmp_path)
    assert seen["sklearn"] is False and seen["scipy.special"] is False
    assert np.array_equal(np.array(seen["p"]), est.predict_proba(x)[:, 1])
    loaded = FraudModel.load(tmp_path / "m.model")
    assert isinstance(loaded.fitted, bytes)  # not unpickled until asked for
    assert np.array_equal(loaded.estimator.predict_proba(x), est.predict_proba(x))
    loaded.save(tmp_path / "again.model")  # saved again from its pickle, as it came
    assert np.array_equal(FraudModel.load(tmp_path / "again.model").score(x), model.score(x))


def test_a_model_the_kernel_does_not_cover_loads_its_estimator_under_the_thread_cap(
    tmp_path: Path,
) -> None:
    """Categorical splits are scored by scikit-learn: the file's estimator is loaded at once,
    and its OpenMP pool takes the cap the process set before scikit-learn was imported."""
    est, x = _fitted(categorical=True)
    assert CompiledTrees.of(est) is None
    FraudModel(est, ("a", "b", "c"), (), "t", 0.5).save(tmp_path / "m.model")
    seen = _load_elsewhere(tmp_path / "m.model", x, tmp_path)
    assert seen["sklearn"] is True and seen["openmp"] and set(seen["openmp"]) == {1}
    assert np.array_equal(np.array(seen["p"]), est.predict_proba(x)[:, 1])


def test_a_model_file_of_the_previous_format_still_loads(tmp_path: Path) -> None:
    """Format 2 (the estimator inline, no compiled trees) is read and scored as before."""
    est, x = _fitted()
    blob = {
        "format": 2,
        "estimator": est,
        "feature_names": ("a", "b", "c"),
        "rule_ids": (),
        "version": "old",
        "threshold": 0.4,
        "info": {},
    }
    (tmp_path / "old.model").write_bytes(pickle.dumps(blob))
    loaded = FraudModel.load(tmp_path / "old.model")
    assert loaded.version == "old" and loaded.compiled is not None
    assert np.array_equal(loaded.score(x), est.predict_proba(x)[:, 1])


_WARM = textwrap.dedent(
    """
    import json, sys
    from fraudstream.detection.model import limit_native_threads, load_kernels_in_background
    kernels = load_kernels_in_background()
    limit_native_threads(1, model=False)
    kernels.join()
    limit_native_threads(1, model=False)
    from threadpoolctl import threadpool_info
    print(json.dumps({
        "numba target loaded": "numba.np.arraymath" in sys.modules,
        "pools": [[i["filepath"], i["num_threads"]] for i in threadpool_info()],
    }))
    """
)


def test_the_kernels_loaded_at_the_start_leave_every_native_pool_at_the_cap() -> None:
    """`detect` loads numba's target in a thread while its start waits on the broker, and
    caps the native pools again once it is done: what it loaded (scipy's own OpenBLAS, which
    numba checks for) takes the cap like the rest. (Before, numba's first call loaded it
    after the cap, in the main thread, and its pool stayed at a thread per core.)"""
    out = subprocess.run([sys.executable, "-c", _WARM], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["numba target loaded"] is True
    assert seen["pools"] and all(n == 1 for _, n in seen["pools"]), seen["pools"]
