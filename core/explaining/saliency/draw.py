"""Drawing saliency maps for people: colour maps, blends, iso-contours, lesion outlines, a legend.

numpy, scipy and Pillow only (no TensorFlow, no matplotlib): colour maps are
256-entry lookup tables interpolated from matplotlib's published anchor colours.
``viridis`` and ``inferno`` are perceptually uniform (equal steps in the map
look like equal steps in colour, also in greyscale and to colour-blind
readers); ``jet`` is kept for comparison with the literature.

Every function takes a map in [0, 1] of any size and the image it lies over;
the map is stretched to the image (bilinear), so it is drawn at the image's
own aspect.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.dataset.images import mask_outline, resize_mask

CMAPS = ("viridis", "inferno", "jet")
DEFAULT_CMAP = "viridis"
CONTOUR_LEVELS = (0.2, 0.4, 0.6, 0.8)
STYLES = ("blend", "contours")
# The blend reads at a glance over dark pigment; thin iso-lines in a colour map's dark end do not.
DEFAULT_STYLE = "blend"
LESION_COLOUR = (255, 255, 255)

# matplotlib's colours at 0, 1/8, ..., 1.
_ANCHORS = {
    "viridis": [[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140],
                [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37]],
    "inferno": [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
                [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]],
}


def lut(name: str) -> np.ndarray:
    """A 256×3 uint8 lookup table: ``viridis``, ``inferno`` or ``jet``."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "jet":
        rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=1) * 255
    elif name in _ANCHORS:
        anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
        stops = np.linspace(0.0, 1.0, len(anchors))
        rgb = np.stack([np.interp(x, stops, anchors[:, k]) for k in range(3)], axis=1)
    else:
        raise ValueError(f"unknown colour map {name!r}: use one of {CMAPS}")
    return np.rint(rgb).astype(np.uint8)


def resize_map(saliency: np.ndarray, shape: tuple) -> np.ndarray:
    """Bilinear resize of a float map to ``shape`` (H, W); float32, never negative."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape == tuple(shape):
        return saliency
    image = Image.fromarray(saliency, mode="F").resize((shape[1], shape[0]), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, None)


def colorize(saliency: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A [0, 1] map as a ``(H, W, 3)`` uint8 heat-map image."""
    index = np.rint(np.clip(np.asarray(saliency, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    return lut(cmap)[index]


def overlay(rgb: np.ndarray, saliency: np.ndarray, *, opacity: float = 0.5, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Blend the heat map of ``saliency`` over ``rgb`` (the map is resized to the image).

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        saliency: ``(h, w)`` map in [0, 1].
        opacity: 0 shows only the image, 1 only the heat map.
        cmap: one of :data:`CMAPS`.
    """
    heat = colorize(resize_map(saliency, rgb.shape[:2]), cmap).astype(np.float32)
    opacity = float(np.clip(opacity, 0.0, 1.0))
    blended = (1.0 - opacity) * np.asarray(rgb, dtype=np.float32) + opacity * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, *, color=LESION_COLOUR, width: int = 2) -> np.ndarray:
    """Draw the outline of a mask (resized to the image, nearest neighbour) on a copy of ``rgb``."""
    edge = mask_outline(resize_mask(mask, rgb.shape[:2]), width)
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[edge] = color
    return out


def contours(rgb: np.ndarray, saliency: np.ndarray, *, levels=CONTOUR_LEVELS, cmap: str = DEFAULT_CMAP,
             width: int = 2, dim: float = 0.0) -> np.ndarray:
    """Iso-contours of the map over the image: one line per level, in that level's colour.

    The image stays visible between the lines; the region above each level is
    enclosed by its line, the highest level innermost. Each line has a one-pixel
    edge of the opposite lightness (white along a dark line, black along a light
    one), so the dark low levels stay visible over dark pigment.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        saliency: ``(h, w)`` map in [0, 1] (resized to the image).
        levels: values in (0, 1) to draw, as shares of the map's maximum.
        cmap: colour map giving each level its colour (:func:`legend` shows it).
        width: line width in pixels.
        dim: darken the image outside the lowest level by this share (0 keeps it).
    """
    saliency = resize_map(saliency, rgb.shape[:2])
    out = np.array(rgb, dtype=np.uint8, copy=True)
    if dim > 0 and levels:
        outside = saliency < min(levels)
        out[outside] = np.rint(out[outside] * (1.0 - dim)).astype(np.uint8)
    colours = lut(cmap)
    for level in sorted(levels):
        region = saliency >= level
        if region.any():
            colour = colours[int(round(level * 255))]
            out[_halo(region, width)] = (0, 0, 0) if _luma(colour) > 128 else (255, 255, 255)
            out[mask_outline(region, width)] = colour
    return out


def _halo(region: np.ndarray, width: int) -> np.ndarray:
    """A band one pixel wider than the line on each side of a region's border."""
    from scipy import ndimage

    return mask_outline(ndimage.binary_dilation(region), width + 2)


def _luma(colour) -> float:
    red, green, blue = (float(c) for c in colour)
    return 0.299 * red + 0.587 * green + 0.114 * blue


def render(rgb: np.ndarray, saliency: np.ndarray, *, style: str = DEFAULT_STYLE, cmap: str = DEFAULT_CMAP,
           opacity: float = 0.5, mask: np.ndarray | None = None, min_width: int = 0) -> np.ndarray:
    """The picture of a map over its image, as the page shows it and ``core.explaining.explain`` saves it.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        saliency: map in [0, 1] of any size (stretched to the image).
        style: ``"contours"`` (iso-lines) or ``"blend"`` (heat map at ``opacity``).
        cmap: one of :data:`CMAPS`.
        opacity: blend opacity (``"blend"`` only).
        mask: a lesion mask to outline in white, or None.
        min_width: upscale small images to at least this width first, so lines stay thin.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {STYLES}")
    rgb = upscale(rgb, min_width)
    if style == "blend":
        out = overlay(rgb, saliency, opacity=opacity, cmap=cmap)
    else:
        out = contours(rgb, saliency, cmap=cmap, width=line_width(rgb))
    if mask is not None:
        out = draw_outline(out, mask, width=line_width(rgb))
    return out


def line_width(rgb: np.ndarray) -> int:
    """Line width in pixels for an image: 3 px at 480 px wide, never below 1."""
    return max(1, rgb.shape[1] // 160)


def upscale(rgb: np.ndarray, min_width: int) -> np.ndarray:
    """``rgb`` enlarged (bicubic, aspect kept) to at least ``min_width`` pixels wide."""
    height, width = rgb.shape[:2]
    if width >= min_width:
        return np.asarray(rgb, dtype=np.uint8)
    size = (int(min_width), int(round(height * min_width / width)))
    return np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(size, Image.Resampling.BICUBIC))


def legend(cmap: str = DEFAULT_CMAP, *, width: int = 320, height: int = 16, levels=CONTOUR_LEVELS,
           discrete: bool = False) -> np.ndarray:
    """A colour-scale bar with tick labels 0 … 1 (share of the map's maximum), ``levels`` marked.

    Args:
        discrete: draw the bar in steps, as :func:`contours` colours its lines: from each level up to the
            next, that level's colour; below the lowest level, grey (no line is drawn there).

    Returns:
        A ``(2 * height, width, 3)`` uint8 image on white (at least ``height + 16`` tall): the bar, then its
        tick labels in a font scaled to the bar, so a wide legend stays sharp instead of being enlarged.
    """
    pad = 12
    values = np.linspace(0.0, 1.0, width - 2 * pad)
    if discrete and levels:
        steps = np.asarray(sorted(levels), dtype=np.float64)
        floor = steps[np.clip(np.searchsorted(steps, values, side="right") - 1, 0, None)]
        bar = lut(cmap)[np.rint(floor * 255).astype(int)]
        bar[values < steps[0]] = (225, 225, 225)
    else:
        bar = lut(cmap)[np.rint(values * 255).astype(int)]
    canvas = Image.new("RGB", (width, height + max(16, height)), (255, 255, 255))
    canvas.paste(Image.fromarray(np.repeat(bar[None], height, axis=0)), (pad, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, height * 3 // 4))
    for value in (0.0, *levels, 1.0):
        x = pad + int(round(value * (width - 2 * pad - 1)))
        draw.line([(x, height - 4), (x, height + 2)], fill=(0, 0, 0), width=1)
        label = f"{value:g}"
        left, _, right, _ = draw.textbbox((0, 0), label, font=font)
        draw.text((min(max(0, x - (right - left) // 2), width - (right - left)), height + 3), label,
                  fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
