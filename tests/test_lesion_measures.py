"""ABCD-rule measurements on synthetic shapes: a circle is symmetric and compact, an irregular star is not."""

import numpy as np
import pytest

from core.serving import lesion_measures as lm
SHAPE = (150, 200)


def polar(radius_of_angle) -> np.ndarray:
    """A mask of the points whose distance from the centre is below ``radius_of_angle(angle)``."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    dy, dx = yy - 75.0, xx - 100.0
    return np.hypot(dy, dx) < radius_of_angle(np.arctan2(dy, dx))


def circle(r: float = 40) -> np.ndarray:
    return polar(lambda a: np.full_like(a, r))


def irregular_star(seed: int = 0) -> np.ndarray:
    """Seven spikes of random lengths: no mirror symmetry, a ragged border."""
    radii = np.random.default_rng(seed).uniform(20, 60, size=7)
    return polar(lambda a: 15 + np.interp(a, np.linspace(-np.pi, np.pi, 15), np.r_[np.ravel(
        np.column_stack([radii, np.full(7, 0)])), radii[0]]))


def test_circle_is_symmetric_and_compact():
    mask = circle()
    major, minor = lm.asymmetry(mask)
    assert major < 0.03 and minor < 0.03
    assert lm.compactness(mask) == pytest.approx(1.0, abs=0.1)
    assert lm.measure(np.zeros((*SHAPE, 3), np.uint8), mask)["asymmetric_axes"] == 0


def test_irregular_star_is_asymmetric_and_irregular():
    mask = irregular_star()
    assert max(lm.asymmetry(mask)) > 0.2
    assert lm.compactness(mask) > 2.0
    assert lm.measure(np.zeros((*SHAPE, 3), np.uint8), mask)["asymmetric_axes"] >= 1


def test_ellipse_is_symmetric_but_less_compact_than_a_circle():
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    ellipse = ((yy - 75) / 25.0) ** 2 + ((xx - 100) / 70.0) ** 2 < 1
    assert max(lm.asymmetry(ellipse)) < 0.03
    assert lm.compactness(ellipse) > lm.compactness(circle()) + 0.2


def test_principal_axes_follow_the_long_side():
    mask = np.zeros(SHAPE, bool)
    mask[70:80, 20:180] = True  # a horizontal bar
    centre, axes = lm.principal_axes(mask)
    assert centre == pytest.approx((74.5, 99.5))
    assert abs(axes[0][1]) == pytest.approx(1.0)  # the major axis runs along the columns


def test_area_share_of_a_rectangle():
    mask = np.zeros((10, 20), bool)
    mask[:5, :10] = True
    assert lm.area_share(mask) == pytest.approx(0.25)


def test_colours_counts_the_abcd_colours_that_cover_enough_of_the_lesion():
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    rgb[:, :100] = lm.ABCD_COLOURS["dark brown"]
    rgb[:, 100:] = lm.ABCD_COLOURS["blue-grey"]
    rgb[:3, :3] = lm.ABCD_COLOURS["red"]  # far below the 5 % needed to count
    mask = np.ones(SHAPE, bool)
    m = lm.measure(rgb, mask)
    assert m["colours"] == 2 and m["colour_names"] == "dark brown, blue-grey"
    assert lm.colour_shares(rgb, mask)["dark brown"] == pytest.approx(0.5, abs=0.01)


def test_empty_mask_measures_without_failing():
    m = lm.measure(np.zeros((*SHAPE, 3), np.uint8), np.zeros(SHAPE, bool))
    assert m["area_share"] == 0 and m["colours"] == 0 and m["asymmetric_axes"] == 0
    assert np.isnan(m["compactness"])


def test_mismatched_image_and_mask_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        lm.colour_shares(np.zeros((10, 10, 3), np.uint8), np.ones((10, 12), bool))


def test_every_measurement_has_an_explanation():
    assert set(lm.EXPLANATIONS) == {"area_share", "asymmetry", "compactness", "colours"}
    assert all(text.strip() for text in lm.EXPLANATIONS.values())
