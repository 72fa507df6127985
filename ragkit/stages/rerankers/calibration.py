"""Turning raw relevance scores into probabilities, fitted on labelled data and stored as JSON.

Two methods:

* ``platt``: ``p = sigmoid(a * s + b)``, fitted by regularised logistic regression (Newton steps);
  smooth and safe with little data.
* ``isotonic``: a non-decreasing step function fitted by pool-adjacent-violators, interpolated
  linearly between steps; needs more data, makes no shape assumption.

The artifact is a small JSON file (never a pickle)::

    {"format": "ragkit-calibration", "version": 1, "backend": "bi_encoder", "method": "platt",
     "params": {"a": 11.3, "b": -5.1}, "n": 2000, "positives": 200, "brier": 0.061, "note": "..."}

Example:
    >>> from ragkit.stages.rerankers.calibration import Calibrator
    >>> cal = Calibrator.fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], method="platt", backend="bi_encoder")
    >>> bool(cal.predict([0.85])[0] > 0.5 > cal.predict([0.15])[0])
    True
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ragkit.errors import InputError

__all__ = ["Calibrator", "brier_score", "expected_calibration_error"]

FORMAT = "ragkit-calibration"


class Calibrator:
    """A fitted score-to-probability map for one reranker backend.

    Args:
        method: ``platt``, ``isotonic`` or ``sigmoid`` (fixed ``a``/``b``, not fitted).
        params: ``{"a", "b"}`` for platt/sigmoid; ``{"x": [...], "y": [...]}`` for isotonic.
        backend: the scorer the raw scores come from (checked when the reranker loads it).
        info: what it was fitted on (counts, Brier score, a note).
    """

    def __init__(self, method: Literal["platt", "isotonic", "sigmoid"], params: dict[str, Any], backend: str = "", info: dict[str, Any] | None = None) -> None:
        if method not in ("platt", "isotonic", "sigmoid"):
            raise ValueError(f"calibration method must be platt, isotonic or sigmoid, not {method!r}")
        if method == "isotonic" and (len(params.get("x", [])) != len(params.get("y", [])) or not params.get("x")):
            raise ValueError("isotonic calibration needs equally long, non-empty 'x' and 'y'")
        if method != "isotonic" and not {"a", "b"} <= set(params):
            raise ValueError(f"{method} calibration needs parameters 'a' and 'b'")
        self.method = method
        self.params = dict(params)
        self.backend = backend
        self.info = dict(info or {})

    @classmethod
    def sigmoid(cls, a: float, b: float, backend: str = "") -> Calibrator:
        """A fixed logistic curve (the uncalibrated default)."""
        return cls("sigmoid", {"a": float(a), "b": float(b)}, backend, {"note": "fixed default, not fitted"})

    @classmethod
    def fit(
        cls, scores: Sequence[float], labels: Sequence[int | bool], method: Literal["platt", "isotonic"] = "platt", backend: str = "", note: str = ""
    ) -> Calibrator:
        """Fit on raw ``scores`` with 0/1 ``labels`` (1 = the passage is relevant)."""
        import numpy as np

        s = np.asarray(scores, dtype="float64")
        y = np.asarray(labels, dtype="float64")
        if s.shape != y.shape or s.ndim != 1 or len(s) < 2:
            raise InputError("calibration needs two equally long 1-d lists with at least 2 items")
        if not ((y == 0) | (y == 1)).all():
            raise InputError("calibration labels must be 0 or 1")
        if y.min() == y.max():
            raise InputError("calibration needs both relevant (1) and irrelevant (0) examples")
        if method == "platt":
            a, b = _platt(s, y)
            cal = cls("platt", {"a": a, "b": b}, backend)
        elif method == "isotonic":
            x, v = _isotonic(s, y)
            cal = cls("isotonic", {"x": x, "y": v}, backend)
        else:
            raise ValueError(f"calibration method must be platt or isotonic, not {method!r}")
        p = cal.predict(s)
        cal.info = {"n": int(len(s)), "positives": int(y.sum()), "brier": round(brier_score(p, y), 5), "ece": round(expected_calibration_error(p, y), 5)}
        if note:
            cal.info["note"] = note
        return cal

    def predict(self, scores: Sequence[float] | Any) -> Any:
        """Probabilities for raw ``scores`` (a float numpy array)."""
        import numpy as np

        s = np.asarray(scores, dtype="float64")
        if self.method == "isotonic":
            return np.interp(s, self.params["x"], self.params["y"]).astype("float32")
        z = np.clip(self.params["a"] * s + self.params["b"], -50, 50)
        return (1.0 / (1.0 + np.exp(-z))).astype("float32")

    # ---- artifact ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "backend": self.backend, "method": self.method, "params": self.params, **self.info}

    def save(self, path: str | Path) -> Path:
        """Write the JSON artifact atomically (temporary file, fsync, rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"calibration file {p} does not exist (fit one, or leave 'calibration' unset)") from None
        except ValueError as e:
            raise InputError(f"calibration file {p} is not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f"{p} is not a ragkit calibration file (its 'format' is not {FORMAT!r})")
        info = {k: v for k, v in d.items() if k not in ("format", "version", "backend", "method", "params")}
        try:
            return cls(d["method"], d["params"], d.get("backend", ""), info)
        except (KeyError, ValueError) as e:
            raise InputError(f"calibration file {p} is malformed ({e})") from None


def _platt(s: Any, y: Any, l2: float = 1e-3, steps: int = 100) -> tuple[float, float]:
    """Logistic regression of y on s with Platt's smoothed targets, by Newton's method."""
    import numpy as np

    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # Platt (1999): avoids overconfidence
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    x = (s - mu) / sd
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -50, 50)))
        grad = X.T @ (p - t) + l2 * np.array([w[0], 0.0])
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.diag([1.0, 0.0]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(H, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    a = w[0] / sd
    return float(a), float(w[1] - a * mu)


def _isotonic(s: Any, y: Any) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators; returns knots (mean score of each block, block mean label)."""
    import numpy as np

    order = np.argsort(s, kind="stable")
    xs, ys = s[order], y[order]
    blocks: list[list[float]] = []  # [sum_y, count, sum_x]
    for xv, yv in zip(xs.tolist(), ys.tolist()):
        blocks.append([yv, 1.0, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            sy, c, sx = blocks.pop()
            blocks[-1][0] += sy
            blocks[-1][1] += c
            blocks[-1][2] += sx
    knots_x = [b[2] / b[1] for b in blocks]
    knots_y = [b[0] / b[1] for b in blocks]
    return [float(v) for v in knots_x], [float(min(1.0, max(0.0, v))) for v in knots_y]


def brier_score(p: Sequence[float] | Any, y: Sequence[int] | Any) -> float:
    """Mean squared error between probabilities and 0/1 outcomes (lower is better)."""
    import numpy as np

    p, y = np.asarray(p, dtype="float64"), np.asarray(y, dtype="float64")
    return float(np.mean((p - y) ** 2)) if len(p) else math.nan


def expected_calibration_error(p: Sequence[float] | Any, y: Sequence[int] | Any, bins: int = 10) -> float:
    """Mean |confidence - accuracy| over equal-width probability bins, weighted by bin size."""
    import numpy as np

    p, y = np.asarray(p, dtype="float64"), np.asarray(y, dtype="float64")
    if not len(p):
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(p) * abs(float(p[m].mean()) - float(y[m].mean()))
    return float(err)
