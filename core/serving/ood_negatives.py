"""Images that are not dermatoscopic, generated to teach the out-of-distribution head what to refuse.

Everything here comes from what the packages ship, never from test images:
crops, rescales, grey and inverted versions of the natural photos named in
:data:`FIT_PHOTOS` (scikit-learn's ``china.jpg``; ``flower.jpg`` is kept out so
the benchmark can show the detector a photo it never saw), and synthetic
textures: flat colours, noise, smooth noise, gradients, stripes,
checkerboards and tiny images blown up, a quarter of them in grey.
"""

import numpy as np

FIT_PHOTOS = ("china.jpg",)
HELD_OUT_PHOTOS = ("flower.jpg",)  # for bench/bench_ood.py only
GREY_SHARE = 0.25


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-learn's sample photographs as RGB uint8."""
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)


def photo_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (8-100 % of the area, aspect 0.6-1.7), flipped half the time."""
    height, width = photo.shape[:2]
    area = rng.uniform(0.08, 1.0) * height * width
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.7)))
    h = int(np.clip(np.sqrt(area / aspect), 8, height))
    w = int(np.clip(np.sqrt(area * aspect), 8, width))
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    crop = photo[top : top + h, left : left + w]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def photo_variant(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop, sometimes rescaled down and up, turned grey or colour-inverted."""
    from PIL import Image

    crop = photo_crop(photo, rng)
    kind = rng.integers(0, 4)
    if kind == 1:
        small = Image.fromarray(crop).resize((max(2, crop.shape[1] // 8), max(2, crop.shape[0] // 8)))
        crop = np.asarray(small.resize((crop.shape[1], crop.shape[0]), Image.Resampling.BILINEAR))
    elif kind == 2:
        crop = grey(crop)
    elif kind == 3:
        crop = 255 - crop
    return crop


def texture(kind: str, rng: np.random.Generator, shape=(150, 200)) -> np.ndarray:
    """One synthetic image of ``kind`` (see :data:`TEXTURES`) as RGB uint8."""
    h, w = shape
    colour = rng.integers(0, 256, 3)
    if kind == "flat":
        return np.full((h, w, 3), colour, dtype=np.uint8)
    if kind == "noisy flat":
        return np.clip(colour + rng.normal(0, rng.uniform(2, 40), (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "tiny":
        side = int(rng.integers(1, 6))
        return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    if kind == "smooth noise":
        from PIL import Image

        cells = rng.integers(0, 256, (int(rng.integers(2, 12)), int(rng.integers(2, 12)), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(cells).resize((w, h), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[:h, :w]
    other = rng.integers(0, 256, 3)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        t = (t - t.min()) / max(np.ptp(t), 1)
        return (colour * (1 - t) + other * t).astype(np.uint8)
    period = int(rng.integers(2, 40))
    on = (xx // period) % 2 if kind == "stripes" else ((xx // period + yy // period) % 2)
    return np.where(on[..., None] == 1, colour, other).astype(np.uint8)


TEXTURES = ("flat", "noisy flat", "noise", "tiny", "smooth noise", "gradient", "stripes", "checkerboard")


def negatives(n: int, seed: int = 0, photos=FIT_PHOTOS) -> list:
    """``n`` non-dermatoscopic RGB images: half photo variants, half synthetic textures, seeded."""
    rng = np.random.default_rng(seed)
    loaded = [sample_photo(name) for name in photos]
    images = []
    for i in range(n):
        if i % 2 == 0 and loaded:
            images.append(photo_variant(loaded[(i // 2) % len(loaded)], rng))
        else:
            image = texture(TEXTURES[(i // 2) % len(TEXTURES)], rng)
            images.append(grey(image) if rng.random() < GREY_SHARE else image)
    return images


def grey(rgb: np.ndarray) -> np.ndarray:
    """The image in shades of grey (dermatoscopic images are never colourless)."""
    return np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
