"""Construction-time checks of the symmetry-compatible maps (issue 17).

Repro (before): ``rownorm(..., threshold=1.0)`` was accepted and zeroed every unit (no row
norm exceeds the largest one); ``eps=-1`` flipped the row normalization into an ascent;
``hybrid(..., gram_steps=0)`` returned a non-orthogonal factor at the first update.
"""

from __future__ import annotations

import pytest

import optzoo


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: optzoo.rownorm(0.02, unit_axis=-1, threshold=1.0), "threshold"),
        (lambda: optzoo.rownorm(0.02, unit_axis=-1, threshold=-0.1), "threshold"),
        (lambda: optzoo.rownorm(0.02, unit_axis=-1, eps=-1.0), "eps"),
        (lambda: optzoo.hybrid(0.02, unit_axis=-1, gram_steps=0), "gram_steps"),
        (lambda: optzoo.one_sided_spectral(0.02, unit_axis=-1, gram_steps=0), "gram_steps"),
        (lambda: optzoo.left_spectral(0.02, unit_axis=-1, gram_steps=0), "gram_steps"),
    ],
)
def test_bad_arguments_are_refused_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_valid_values_are_accepted():
    optzoo.rownorm(0.02, unit_axis=-1, threshold=0.5, eps=0.0)
    optzoo.hybrid(0.02, unit_axis=-1, gram_steps=1)
