"""Drawing saliency maps: colour maps, blends, iso-contours, outlines, legend (no TensorFlow)."""

import numpy as np
import pytest

from core.dataset.images import mask_outline as outline
from core.explaining.saliency.draw import (
    CONTOUR_LEVELS,
    colorize,
    contours,
    draw_outline,
    legend,
    lut,
    overlay,
    render,
    resize_map,
    upscale,
)


def test_colour_maps_run_from_dark_to_bright():
    for name in ("viridis", "inferno"):
        table = lut(name).astype(int)
        assert table.shape == (256, 3)
        brightness = table @ np.array([299, 587, 114])
        assert np.all(np.diff(brightness) >= -50) and brightness[-1] > 5 * brightness[0]
    assert tuple(lut("viridis")[0]) == (68, 1, 84) and tuple(lut("viridis")[-1]) == (253, 231, 37)
    jet = colorize(np.linspace(0, 1, 256)[None], "jet")
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0 and jet[0, -1, 0] > 100 and jet[0, -1, 2] == 0
    with pytest.raises(ValueError):
        lut("rainbow")


def test_overlay_resizes_the_map_to_the_image():
    rgb = np.full((30, 40, 3), 100, np.uint8)
    small = np.zeros((8, 8), np.float32)
    np.testing.assert_array_equal(overlay(rgb, small, opacity=0.0), rgb)
    full = overlay(rgb, small, opacity=1.0)
    assert full.shape == (30, 40, 3) and (full == colorize(np.zeros((30, 40)))).all()
    assert resize_map(np.ones((8, 8), np.float32), (30, 40)).shape == (30, 40)


def test_outline_is_the_mask_border_and_not_the_frame():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    edge = outline(mask, width=1)
    assert edge.sum() == 20 and not edge[4, 4] and edge[2, 2]
    assert outline(mask, width=2).sum() > edge.sum() and not (outline(mask, width=2) & ~mask).any()
    cut = np.zeros((10, 10), bool)
    cut[:, :5] = True  # a region cut by the left edge of the frame
    assert not outline(cut, width=1)[:, 0].any() and outline(cut, width=1)[:, 4].all()
    drawn = draw_outline(np.zeros((20, 20, 3), np.uint8), mask, color=(0, 255, 0), width=1)
    assert drawn.shape == (20, 20, 3) and (drawn[..., 1] == 255).any() and drawn[10, 10, 1] == 0


def test_contours_draw_one_line_per_level_in_its_colour():
    ys, xs = np.mgrid[0:60, 0:80]
    bump = np.exp(-(((ys - 30) / 12.0) ** 2 + ((xs - 40) / 16.0) ** 2)).astype(np.float32)
    rgb = np.full((60, 80, 3), 128, np.uint8)
    out = contours(rgb, bump, width=1)
    for level in CONTOUR_LEVELS:
        colour = lut("viridis")[int(round(level * 255))]
        assert (out == colour).all(axis=-1).sum() > 10, level
    assert (out[0, 0] == 128).all() and (out[30, 40] == 128).all()  # the image shows between the lines
    assert (contours(rgb, np.zeros((5, 5), np.float32)) == rgb).all()


def test_render_keeps_the_image_aspect_and_draws_the_mask():
    rgb = np.zeros((150, 200, 3), np.uint8)
    saliency = np.random.default_rng(0).random((18, 24)).astype(np.float32)
    mask = np.zeros((450, 600), bool)
    mask[100:300, 200:400] = True
    for style in ("contours", "blend"):
        out = render(rgb, saliency, style=style, mask=mask, min_width=480)
        assert out.shape == (360, 480, 3)
        assert (out == (255, 255, 255)).all(axis=-1).any()  # the lesion border in white
    assert upscale(rgb, 100).shape == rgb.shape
    with pytest.raises(ValueError):
        render(rgb, saliency, style="hatching")


def test_legend_is_a_labelled_colour_bar():
    bar = legend("inferno", width=300, height=16)
    assert bar.shape == (32, 300, 3) and bar.dtype == np.uint8
    assert tuple(bar[8, 12]) == tuple(lut("inferno")[0]) and (bar[28] < 128).any()  # tick labels under the bar


def test_the_stepped_legend_shows_the_colours_the_contour_lines_are_drawn_in():
    bar = legend("viridis", width=424, height=20, discrete=True)  # 400 px of bar between 12-px margins
    for level, upper in zip(CONTOUR_LEVELS, (*CONTOUR_LEVELS[1:], 1.0)):
        middle = 12 + int(400 * (level + upper) / 2)  # halfway between a level and the next
        assert tuple(bar[5, middle]) == tuple(lut("viridis")[int(round(level * 255))]), level
    assert tuple(bar[5, 12 + 40]) == (225, 225, 225)  # below the lowest level no line is drawn: grey
    smooth = legend("viridis", width=424, height=20)
    assert len({tuple(c) for c in smooth[5, 12:412]}) > 100  # the heat map's bar is continuous


def test_contour_lines_carry_an_edge_of_the_opposite_lightness():
    ys, xs = np.mgrid[0:60, 0:80]
    bump = np.exp(-(((ys - 30) / 12.0) ** 2 + ((xs - 40) / 16.0) ** 2)).astype(np.float32)
    dark = np.full((60, 80, 3), 40, np.uint8)  # pigment
    out = contours(dark, bump, levels=(0.2,), width=1)
    line = (out == lut("viridis")[51]).all(axis=-1)  # 0.2 is a dark purple
    assert line.sum() > 10
    assert (out == 255).all(axis=-1).sum() >= line.sum()  # a white edge along it, visible over the pigment
    light = contours(np.full((60, 80, 3), 220, np.uint8), bump, levels=(0.8,), width=1)
    assert (light == 0).all(axis=-1).sum() > 10  # a light line (0.8) gets a black edge


def test_the_blend_is_the_default_picture():
    rgb = np.full((30, 40, 3), 100, np.uint8)
    saliency = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    assert (render(rgb, saliency) == render(rgb, saliency, style="blend")).all()
