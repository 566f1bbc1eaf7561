"""The compiled tree kernel gives the estimator's own probabilities, bit for bit."""

from __future__ import annotations

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
