"""The standardised sum that combined scores share (critic, DCGAN, export reader)."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.errors import CheckpointError
from anomaly.standardise import standardised, standardised_sum


def test_each_component_is_standardised_on_the_normals_then_summed():
    normals = {"a": [1.0, 3.0], "b": [10.0, 10.0, 10.0]}  # b's spread is 0: floored
    total = standardised_sum({"a": np.array([2.0, 5.0]), "b": np.array([10.0, 10.0])},
                             normals, ("a", "b"), "a+b")
    np.testing.assert_allclose(total, [0.0, 3.0])
    with pytest.raises(CheckpointError, match="the a\\+b score needs held-out normal"):
        standardised_sum({"a": np.zeros(1)}, None, ("a",), "a+b")
    for broken in ({"a": [1.0, 3.0]}, {"a": [1.0, 3.0], "b": []}):
        with pytest.raises(CheckpointError, match="no held-out normal b values in export.json"):
            standardised_sum({"a": np.zeros(1), "b": np.zeros(1)}, broken, ("a", "b"), "a+b",
                             source="export.json")


def test_one_component_standardised_alone():
    np.testing.assert_allclose(standardised([2.0, 5.0], [1.0, 3.0]), [0.0, 3.0])  # mean 2, sd 1
    np.testing.assert_allclose(standardised(np.array([10.0, 11.0]), [10.0, 10.0]), [0.0, 1e12])
