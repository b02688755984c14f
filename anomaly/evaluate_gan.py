"""Former name of :mod:`anomaly.evaluate_model` (it evaluates a run of any family)."""

from anomaly.evaluate_model import *  # noqa: F401,F403
from anomaly.evaluate_model import evaluate_model as evaluate_gan  # noqa: F401
