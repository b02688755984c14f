"""From a score to a decision: a label at a threshold stored with the model, and a
conformal p-value against the normal films held out from training.

A film is ``anomalous`` when its score reaches the threshold (``score >= threshold``, as
the evaluation counts it). The threshold is, in this order: one given on the command
line; one stored by ``anomaly calibrate`` for the same mode, score and settings (picked
on labelled validation data by Youden's J or F1, or a quantile of normal-only
validation); else the 95% quantile of the held-out normals' scores.

The p-value of a score s is ``(1 + #{held-out normal scores >= s}) / (n + 1)``: for a
film exchangeable with the held-out normals (a normal film like the training ones) it
is at most alpha with probability at most alpha, so flagging ``p <= alpha`` keeps the
false-positive rate on such films at or below alpha without any labelled data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

HELDOUT_QUANTILE = 0.95
NOT_FINITE = "not-finite"  # the label of a film whose score is NaN or infinite


def check_threshold_value(value, source: str = "--threshold") -> float:
    """A decision threshold as a float, refused in one line when it is not a finite
    number (a NaN threshold would label every film normal)."""
    from anomaly.validate import finite_number

    return finite_number(value, f"{source}: threshold")


def conformal_p_values(scores, normal_scores) -> np.ndarray:
    """``(1 + #{normal >= s}) / (n + 1)`` for each score s (higher = more anomalous)."""
    normal = np.sort(np.asarray(normal_scores, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    at_least = len(normal) - np.searchsorted(normal, scores, side="left")  # normal >= s
    return (1.0 + at_least) / (len(normal) + 1.0)


def threshold_key(output_settings: dict) -> str:
    """The key a stored threshold is filed under: the score kind and every setting that
    changes the scores (not the checkpoint digest, which storing changes)."""
    return json.dumps({k: v for k, v in output_settings.items() if k != "checkpoint"},
                      sort_keys=True)


@dataclass
class Decision:
    """How scores become labels.

    Attributes:
        threshold: score at or above which a film is anomalous (None with ``alpha``).
        source: where it came from: ``given``, ``val``, ``normal-val-quantile``,
            ``heldout-normal-quantile``, ``conformal``, or ``none`` (no labels).
        normal_scores: scores of the held-out normals (for p-values), or None.
        alpha: flag where the p-value is at most this (instead of the threshold).
    """

    threshold: float | None
    source: str
    normal_scores: np.ndarray | None = None
    alpha: float | None = None

    def p_values(self, scores) -> np.ndarray:
        """Conformal p-values of the scores (NaN without held-out normals, and for a
        score that is not finite)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.normal_scores is None or len(self.normal_scores) == 0:
            return np.full(len(scores), np.nan)
        return np.where(np.isfinite(scores), conformal_p_values(scores, self.normal_scores),
                        np.nan)

    def labels(self, scores) -> list[str]:
        """``anomalous`` or ``normal`` for each score (empty without any threshold);
        a score that is not finite is labelled :data:`NOT_FINITE`, never ``normal``."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.threshold is None and self.alpha is None:
            return [NOT_FINITE if not np.isfinite(s) else "" for s in scores]
        flagged = (self.p_values(scores) <= self.alpha) if self.alpha is not None \
            else scores >= self.threshold
        return [NOT_FINITE if not np.isfinite(s) else "anomalous" if f else "normal"
                for s, f in zip(scores, flagged)]

    def describe(self) -> str:
        """One line: what flags a film."""
        if self.alpha is not None:
            return (f"flagging p <= {self.alpha:g} against {len(self.normal_scores)} "
                    "held-out normals (conformal)")
        if self.threshold is None:
            return ("no threshold (none stored, no held-out normals): labels left empty; "
                    "run 'anomaly calibrate' or pass --threshold")
        return f"threshold {self.threshold:.5g} ({self.source})"


def make_decision(normal_scores, stored: dict | None = None, threshold: float | None = None,
                  alpha: float | None = None) -> Decision:
    """The decision rule for a scorer (see the module docstring for the order).

    Args:
        normal_scores: the held-out normals' scores, or None when unknown.
        stored: a threshold stored by ``anomaly calibrate`` (``value``, ``source``).
        threshold: a threshold given by the user.
        alpha: flag by conformal p-value instead.

    Raises:
        ValueError: ``alpha`` without held-out normals, out of (0, 1), or below the
            smallest p-value they allow (1 / (n + 1)).
    """
    normal = None if normal_scores is None else np.asarray(normal_scores, dtype=np.float64)
    if normal is not None and not np.isfinite(normal).all():  # NaN would inflate p-values
        raise ValueError("the held-out normals' scores stored with the model hold NaN or "
                         "infinite values")
    if alpha is not None:
        if not 0 < alpha < 1:  # NaN fails this too
            raise ValueError(f"--alpha must be between 0 and 1, not {alpha}")
        if normal is None or len(normal) == 0:
            raise ValueError("--alpha needs the scores of the normal films held out from "
                             "training, and this run has none")
        if alpha < 1 / (len(normal) + 1):  # the smallest p-value there is: none flagged
            raise ValueError(f"--alpha {alpha:g} can flag no film: against {len(normal)} "
                             f"held-out normals the smallest p-value is "
                             f"1/{len(normal) + 1} = {1 / (len(normal) + 1):.4g}")
        return Decision(None, "conformal", normal, alpha)
    if threshold is not None:
        return Decision(check_threshold_value(threshold), "given", normal)
    if stored is not None:
        return Decision(check_threshold_value(stored.get("value"), "the stored threshold"),
                        str(stored.get("source")), normal)
    if normal is not None and len(normal):
        return Decision(float(np.quantile(normal, HELDOUT_QUANTILE)),
                        "heldout-normal-quantile", normal)
    return Decision(None, "none")
