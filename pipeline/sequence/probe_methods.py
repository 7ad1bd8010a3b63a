"""The probes ``actrec probe`` can fit on pooled features (``probe.method``): a linear probe and kNN, each with
its settings, registered together.

A probe is built as ``fit(train, val, num_classes, **settings)`` with ``train`` and ``val`` as (features ``[N, D]``,
labels ``[N]``) and returns a ``Fitted``: what validation chose, its score for every candidate, and the model
refit on training + validation, whose ``probabilities(features)`` are ``[N, num_classes]``. scikit-learn is
imported when a probe is fitted (``pip install -e '.[probe]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.errors import ActrecError
from pipeline.optional import require
from pipeline.registry import registry
from pipeline.schema import key

PROBES = registry("probe")
NEEDS = "`actrec probe`"


@dataclass
class Fitted:
    """A probe fitted on training + validation with the setting validation chose."""

    chosen: dict  # e.g. {"C": 0.1}
    validation: dict  # candidate -> validation top-1
    probabilities: Callable[[np.ndarray], np.ndarray]
    details: dict = field(default_factory=dict)


@dataclass
class LinearProbeConfig:
    c_min: float = key(1e-3, "smallest inverse regularisation strength C tried", min=1e-12, max=1e12)
    c_max: float = key(1e3, "largest C tried", min=1e-12, max=1e12)
    c_steps: int = key(7, "values of C tried, log-spaced from c_min to c_max; validation top-1 picks one",
                       min=1, max=100)
    max_iter: int = key(1000, "L-BFGS iterations per fit", min=1, max=1_000_000)

    def check(self) -> None:
        if self.c_min > self.c_max:
            raise ActrecError(f"probe.c_min={self.c_min:g} is above probe.c_max={self.c_max:g}")


def fit_linear(train, val, num_classes: int, c_min: float, c_max: float, c_steps: int, max_iter: int) -> Fitted:
    """Logistic regression (L-BFGS, multinomial) on standardised features; C chosen on validation, then refit."""
    linear_model, pipeline, preprocessing = (require(f"sklearn.{name}", NEEDS)
                                             for name in ("linear_model", "pipeline", "preprocessing"))

    def model(c: float):
        return pipeline.make_pipeline(preprocessing.StandardScaler(),
                                      linear_model.LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs"))

    candidates = [float(c) for c in np.geomspace(c_min, c_max, c_steps)]
    scores = _validation_scores(candidates, model, train, val, "probe.c_steps")
    best = max(candidates, key=lambda c: (scores.get(c, 0.0), -c))  # ties: the stronger regularisation
    final = model(best).fit(*_joined(train, val))
    return Fitted({"C": best}, {f"{c:g}": s for c, s in scores.items()},
                  lambda x: _full(final.predict_proba(x), final.classes_, num_classes),
                  {"iterations": int(np.max(final[-1].n_iter_))})


@dataclass
class KnnConfig:
    k_max: int = key(50, "largest k tried (1, 3, 5, 10, 20, 50, 100, 200, ... up to it and to the training "
                         "videos); validation top-1 picks one", min=1, max=100_000)


def fit_knn(train, val, num_classes: int, k_max: int) -> Fitted:
    """k nearest neighbours by cosine similarity (features L2-normalised), votes uniform; k chosen on validation."""
    neighbors = require("sklearn.neighbors", NEEDS)

    def model(k: int):
        return neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")

    ladder = [k for k in _ladder(k_max) if k <= len(train[1])] or [1]
    train, val = (_unit(train[0]), train[1]), (_unit(val[0]), val[1])
    scores = _validation_scores(ladder, model, train, val, "probe.k_max")
    best = max(ladder, key=lambda k: (scores.get(k, 0.0), -k))
    final = model(best).fit(*_joined(train, val))
    return Fitted({"k": best}, {str(k): s for k, s in scores.items()},
                  lambda x: _full(final.predict_proba(_unit(x)), final.classes_, num_classes))


PROBES.register("linear", LinearProbeConfig, fit_linear, "logistic regression (L-BFGS), C chosen on validation")
PROBES.register("knn", KnnConfig, fit_knn, "k nearest neighbours by cosine similarity, k chosen on validation")


def _validation_scores(candidates: list, model: Callable[[Any], Any], train, val, option: str) -> dict:
    """Validation top-1 of a model fitted on ``train`` for each candidate (none: the one candidate, unscored)."""
    if not len(val[1]):
        if len(candidates) > 1:
            raise ActrecError(f"no validation videos to choose among {len(candidates)} candidates "
                              f"(data.val_fraction is 0); set data.val_fraction above 0, or {option} to one value")
        return {}
    return {c: float((model(c).fit(*train).predict(val[0]) == val[1]).mean()) for c in candidates}


def _joined(train, val) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])


def _full(probabilities: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities over every class (a class no training video has gets 0)."""
    out = np.zeros((len(probabilities), num_classes))
    out[:, classes] = probabilities
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ladder(k_max: int) -> list[int]:
    ladder, base = [1, 3, 5], 10
    while base <= k_max:
        ladder += [base, 2 * base, 5 * base]
        base *= 10
    return [k for k in ladder if k <= k_max]
