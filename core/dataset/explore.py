"""Filters and aggregates of the image table for the Explore page (pandas only).

Everything here works on the table of ``core.dataset.data.load_dataset`` and is cheap
enough to run on every widget change: filtering the 10,015 HAM10000 rows and
computing every aggregate the page draws takes a few tens of milliseconds.
"""

from dataclasses import dataclass

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.dataset.images import mask_outline, read_image, read_mask, resize_mask
from core.contracts.labels import CLASSES


@dataclass(frozen=True)
class Filters:
    """A selection of images. Empty tuples and ``None`` mean "no restriction".

    Attributes:
        classes: diagnosis codes to keep.
        sexes: values of ``sex`` to keep.
        age_range: inclusive (low, high) ages.
        include_missing_age: keep images without an age when an age range is set.
        sites: values of ``localization`` to keep.
        dx_types: values of ``dx_type`` to keep.
        search: part of an ``image_id`` or ``lesion_id`` (case-insensitive).
    """

    classes: tuple = ()
    sexes: tuple = ()
    age_range: tuple | None = None
    include_missing_age: bool = True
    sites: tuple = ()
    dx_types: tuple = ()
    search: str = ""


def filter_frame(frame: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """The rows of ``frame`` that pass ``filters``, in their original order."""
    keep = np.ones(len(frame), dtype=bool)
    for column, values in (
        ("dx", filters.classes),
        ("sex", filters.sexes),
        ("localization", filters.sites),
        ("dx_type", filters.dx_types),
    ):
        if values:
            keep &= frame[column].isin(list(values)).to_numpy()
    if filters.age_range is not None:
        low, high = filters.age_range
        age = frame["age"].to_numpy(dtype=float, na_value=np.nan)
        in_range = (age >= low) & (age <= high)
        keep &= in_range | (np.isnan(age) & filters.include_missing_age)
    needle = filters.search.strip().lower()
    if needle:
        found = np.zeros(len(frame), dtype=bool)
        for column in ("image_id", "lesion_id"):
            found |= frame[column].astype(str).str.lower().str.contains(needle, regex=False).to_numpy()
        keep &= found
    return frame[keep]


def class_order(frame: pd.DataFrame) -> list:
    """Our classes in their fixed order, then any other labels present, sorted."""
    return list(CLASSES) + sorted(set(frame["dx"].unique()) - set(CLASSES))


def overview(frame: pd.DataFrame) -> dict:
    """Headline numbers of a (filtered) table.

    Returns:
        ``images``, ``lesions``, ``images_per_lesion`` (Series: images of a
        lesion -> number of lesions), ``missing`` (DataFrame per column: empty
        values and ``unknown`` values) and ``dx_types`` (Series of counts).
    """
    per_lesion = frame.groupby("lesion_id", sort=False).size()
    columns = ["age", "sex", "localization", "dx_type"]
    missing = pd.DataFrame(
        {
            "missing": [int(frame[c].isna().sum()) for c in columns],
            "unknown": [int((frame[c] == "unknown").sum()) if c != "age" else 0 for c in columns],
        },
        index=columns,
    )
    return {
        "images": int(len(frame)),
        "lesions": int(len(per_lesion)),
        "images_per_lesion": per_lesion.value_counts().sort_index().rename_axis("images").rename("lesions"),
        "missing": missing,
        "dx_types": frame["dx_type"].value_counts(),
    }


def class_distribution(frame: pd.DataFrame) -> pd.DataFrame:
    """Images, lesions and share of images per class (every class, zero when absent)."""
    order = class_order(frame)
    grouped = frame.groupby("dx", sort=False)
    table = pd.DataFrame({"images": grouped.size(), "lesions": grouped["lesion_id"].nunique()})
    table = table.reindex(order, fill_value=0).astype(np.int64)
    total = table["images"].sum()
    table["share"] = table["images"] / total if total else 0.0
    table.index.name = "dx"
    return table


def age_by_class(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``dx`` and ``age`` of every image with a known age (for box plots)."""
    return frame.loc[frame["age"].notna(), ["dx", "age"]]


def age_boxes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class with a known age: the five numbers of a Tukey box plot and n.

    Columns ``q1``, ``median``, ``q3``, ``lowerfence``, ``upperfence`` (the most
    extreme ages within 1.5 IQR of the box) and ``n``; classes in the fixed order.
    A browser draws seven precomputed boxes much faster than ten thousand points.
    """
    rows = {}
    for dx, ages in age_by_class(frame).groupby("dx", sort=False)["age"]:
        q1, median, q3 = np.percentile(ages, [25, 50, 75])
        reach = 1.5 * (q3 - q1)
        inside = ages[(ages >= q1 - reach) & (ages <= q3 + reach)]
        rows[dx] = {"q1": q1, "median": median, "q3": q3, "lowerfence": inside.min(), "upperfence": inside.max(),
                    "n": len(ages)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["q1", "median", "q3", "lowerfence", "upperfence", "n"])
    return table.reindex([c for c in class_order(frame) if c in table.index]).rename_axis("dx")


def age_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: images with an age, median age, and images without an age."""
    grouped = frame.groupby("dx", sort=False)["age"]
    table = pd.DataFrame(
        {"with_age": grouped.count(), "median": grouped.median(), "missing": grouped.size() - grouped.count()}
    )
    return table.reindex([c for c in class_order(frame) if c in table.index])


def by_class(frame: pd.DataFrame, column: str, normalize: bool = False) -> pd.DataFrame:
    """Cross-table of ``column`` values (rows) by class (columns, fixed order).

    Args:
        frame: the image table.
        column: e.g. ``sex``, ``localization`` or ``dx_type``.
        normalize: give each class column's share instead of counts.

    Returns:
        Counts (or shares) with every class as a column; rows sorted by total.
        A class without any image has no shares: its column is NaN, not 0.
    """
    counts = frame.groupby([column, "dx"], sort=False).size().unstack("dx", fill_value=0)
    counts = counts.reindex(columns=class_order(frame), fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    counts.columns.name, counts.index.name = "dx", column
    if normalize:
        totals = counts.sum(axis=0).astype(float).replace(0, np.nan)
        return counts / totals
    return counts.astype(np.int64)


def page_aggregates(frame: pd.DataFrame, filters: Filters, normalize: bool = False) -> dict:
    """Filter once and compute everything the Explore page draws.

    Returns:
        ``frame`` (the filtered rows), ``overview``, ``classes``, ``ages`` (box-plot numbers),
        ``sex``, ``site`` and ``dx_type`` (cross-tables by class).
    """
    selected = filter_frame(frame, filters)
    return {
        "frame": selected,
        "overview": overview(selected),
        "classes": class_distribution(selected),
        "ages": age_boxes(selected),
        "sex": by_class(selected, "sex", normalize),
        "site": by_class(selected, "localization", normalize),
        "dx_type": by_class(selected, "dx_type", normalize),
    }


def lesion_images(frame: pd.DataFrame, lesion_id: str) -> pd.DataFrame:
    """All images of one lesion, sorted by image id."""
    return frame[frame["lesion_id"] == lesion_id].sort_values("image_id")


def outlined_image(image_path: str, mask_path: str = "", *, max_width: int = 400, color=(0, 255, 255)) -> Image.Image:
    """An RGB image, shrunk to ``max_width``, with its lesion mask's outline drawn on it.

    The mask is resized to the image (masks and images may differ in size); an
    empty ``mask_path`` gives the plain image, and so does an unreadable mask
    (``image.info["mask_error"]`` then says why).

    Raises:
        OSError, ValueError: the image itself cannot be read.
    """
    image = Image.fromarray(read_image(image_path))
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.BILINEAR)
    if not mask_path:
        return image
    try:
        mask = resize_mask(read_mask(mask_path), (image.height, image.width))
    except (OSError, ValueError) as err:
        image.info["mask_error"] = f"mask {Path(mask_path).name} unreadable ({type(err).__name__})"
        return image
    pixels = np.asarray(image).copy()
    pixels[mask_outline(mask, width=max(1, image.width // 100))] = color
    return Image.fromarray(pixels)
