"""Lesion measurements for teaching the ABCD rule of dermoscopy, from a lesion mask.

* **A**symmetry: the mask is mirrored about each of its two principal axes
  (through its centroid); the score is the share of the lesion that does not
  overlap its mirror image (0 = perfectly symmetric).
* **B**order irregularity: compactness ``perimeter² / (4π · area)``, 1 for a
  disc and larger for ragged or elongated borders.
* **C**olour: how many of the six ABCD colours (white, red, light brown, dark
  brown, blue-grey, black) cover at least ``COLOUR_MIN_SHARE`` of the lesion,
  each pixel assigned to the nearest reference colour.
* Area share: the lesion's share of the image (the photo has no scale, so no
  diameter in millimetres).

These are rough, scale-free illustrations of the rule, not clinical scores.
"""

import numpy as np

ABCD_COLOURS = {
    "white": (235, 235, 235),
    "red": (200, 60, 60),
    "light brown": (190, 130, 90),
    "dark brown": (100, 60, 40),
    "blue-grey": (110, 125, 150),
    "black": (30, 25, 25),
}
COLOUR_MIN_SHARE = 0.05
MAX_COLOUR_PIXELS = 250_000
ASYMMETRY_AXIS_THRESHOLD = 0.15  # above this, an axis counts as asymmetric in the ABCD "A" count

EXPLANATIONS = {
    "area_share": "Share of the image the lesion covers (the photo has no scale, so this is no diameter).",
    "asymmetry": "A: the lesion mirrored about its two principal axes; the share that does not overlap "
                 "(0 = symmetric). The ABCD rule counts asymmetric axes (0, 1 or 2).",
    "compactness": "B: perimeter² / (4π · area) of the outline: 1 for a circle, higher for an irregular border.",
    "colours": "C: how many of the six ABCD colours (white, red, light brown, dark brown, blue-grey, black) "
               f"cover at least {COLOUR_MIN_SHARE:.0%} of the lesion; more colours weigh towards melanoma.",
}


def _check_mask(mask) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    return mask


def area_share(mask) -> float:
    """The share of the image covered by the mask, in 0..1."""
    mask = _check_mask(mask)
    return float(mask.mean()) if mask.size else 0.0


def principal_axes(mask) -> tuple[np.ndarray, np.ndarray]:
    """The mask's centroid ``(row, col)`` and its two principal axes (unit vectors, major first, as rows)."""
    rows, cols = np.nonzero(_check_mask(mask))
    points = np.stack([rows, cols], axis=1).astype(np.float64)
    centre = points.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(points - centre, rowvar=False) if len(points) > 1 else np.eye(2))
    return centre, vectors[:, np.argsort(values)[::-1]].T


def asymmetry(mask) -> tuple[float, float]:
    """Asymmetry about the major and the minor principal axis: the share of lesion pixels whose mirror is outside.

    Returns:
        ``(major, minor)`` in 0..1; ``(0, 0)`` for an empty mask.
    """
    mask = _check_mask(mask)
    if mask.sum() < 2:
        return 0.0, 0.0
    centre, axes = principal_axes(mask)
    points = np.stack(np.nonzero(mask), axis=1).astype(np.float64) - centre
    scores = []
    for axis in axes:
        # mirroring about an axis flips the component along the other (normal) axis
        normal = np.array([-axis[1], axis[0]])
        mirrored = points - 2.0 * np.outer(points @ normal, normal) + centre
        r, c = np.rint(mirrored).astype(int).T
        inside = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
        hit = np.zeros(len(points), bool)
        hit[inside] = mask[r[inside], c[inside]]
        scores.append(float(1.0 - hit.mean()))
    return scores[0], scores[1]


def perimeter(mask) -> float:
    """The outline's length in pixels: the count of lesion/background pixel edges times π/4.

    Counting pixel edges measures a digital disc's outline in the city-block
    metric, 4/π times its Euclidean length; the factor corrects for it on average.
    """
    padded = np.pad(_check_mask(mask), 1).astype(np.int8)
    edges = np.abs(np.diff(padded, axis=0)).sum() + np.abs(np.diff(padded, axis=1)).sum()
    return float(edges) * np.pi / 4.0


def compactness(mask) -> float:
    """``perimeter² / (4π · area)``: about 1 for a disc, larger for irregular borders; NaN for an empty mask."""
    area = float(_check_mask(mask).sum())
    return float("nan") if area == 0 else perimeter(mask) ** 2 / (4.0 * np.pi * area)


def colour_shares(rgb, mask) -> dict:
    """The share of lesion pixels nearest to each ABCD reference colour (RGB distance)."""
    rgb, mask = np.asarray(rgb), _check_mask(mask)
    if rgb.shape[:2] != mask.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image {rgb.shape} and mask {mask.shape} do not match")
    pixels = rgb[mask]
    # an even subsample bounds memory (N × 6 distances) on large images; shares change by well under 1 %
    pixels = pixels[:: max(1, len(pixels) // MAX_COLOUR_PIXELS)].astype(np.float64)
    if len(pixels) == 0:
        return {name: 0.0 for name in ABCD_COLOURS}
    references = np.array(list(ABCD_COLOURS.values()), dtype=np.float64)
    nearest = np.argmin(((pixels[:, None, :] - references[None]) ** 2).sum(axis=2), axis=1)
    counts = np.bincount(nearest, minlength=len(references)) / len(pixels)
    return {name: float(share) for name, share in zip(ABCD_COLOURS, counts)}


def measure(rgb, mask) -> dict:
    """Every measurement of one lesion: area share, asymmetry per axis and asymmetric axes, compactness, colours.

    Args:
        rgb: the image, ``(H, W, 3)`` uint8.
        mask: the lesion mask at the image's size, ``(H, W)``.
    """
    mask = _check_mask(mask)
    major, minor = asymmetry(mask)
    shares = colour_shares(rgb, mask)
    present = [name for name, share in shares.items() if share >= COLOUR_MIN_SHARE]
    return {"area_share": area_share(mask), "asymmetry_major": major, "asymmetry_minor": minor,
            "asymmetric_axes": int(major > ASYMMETRY_AXIS_THRESHOLD) + int(minor > ASYMMETRY_AXIS_THRESHOLD),
            "compactness": compactness(mask), "colours": len(present), "colour_names": ", ".join(present)}
