"""Load and validate HAM10000 (and other ISIC-style datasets) into one table.

The table every other module works on has one row per image and the columns
``image_id, lesion_id, dx, dx_type, age, sex, localization, path, mask_path``
(``mask_path`` is empty when the dataset has no mask for the image).

Layouts read by :func:`load_dataset`:

* the project layout: ``HAM10000_metadata.csv``, ``images/``, ``masks/``;
* the publisher's layout (Harvard Dataverse, doi:10.7910/DVN/DBW86T): metadata as
  ``HAM10000_metadata`` or ``HAM10000_metadata.csv`` (comma-separated) or
  ``HAM10000_metadata.tab`` (tab-separated Dataverse export), images in
  ``HAM10000_images_part_1/`` + ``HAM10000_images_part_2/`` (or one folder), masks
  in ``HAM10000_segmentations_lesion_tschandl/``.

Masks are named ``<image_id>_segmentation.png``. Images may have any size.
Two further loaders read other ISIC sets into the same table:
:func:`load_isic_csv` (a one-hot ground-truth CSV such as
``ISIC2018_Task3_Test_GroundTruth.csv``) and :func:`load_class_folders` (a
``Train/<class>/*.jpg`` tree). Its command line (download, validate, split) is
:mod:`core.dataset.commands`.
"""

import difflib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from core.contracts.labels import CLASSES
from core.dataset.images import ImageError, read_image, read_mask
from core.dataset.layout import IMAGE_DIRS, MASK_DIRS, MASK_SUFFIX, METADATA_NAMES, find_metadata

METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
TABLE_COLUMNS = ("image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization", "path", "mask_path")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
UNKNOWN = "unknown"

# Class-folder names of other ISIC sets (lower case, "_"/"-" read as spaces) and
# our code for each. Squamous cell carcinoma has no HAM10000 class: HAM10000's
# "akiec" covers only intraepithelial carcinoma, so SCC stays an unknown class.
CLASS_FOLDER_NAMES = {
    "actinic keratosis": "akiec",
    "actinic keratoses": "akiec",
    "ak": "akiec",
    "basal cell carcinoma": "bcc",
    "benign keratosis": "bkl",
    "pigmented benign keratosis": "bkl",
    "seborrheic keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "nevus": "nv",
    "melanocytic nevus": "nv",
    "vascular lesion": "vasc",
    **{code: code for code in CLASSES},
}


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message naming the file and the problem."""


def load_dataset(root: Path) -> pd.DataFrame:
    """Read a HAM10000 folder (project or publisher layout) into the image table.

    Args:
        root: the dataset folder.

    Returns:
        One row per image, columns as described in the module docstring. The
        metadata file is kept in ``frame.attrs["source"]``.

    Raises:
        DatasetError: the folder, metadata or images are missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    metadata_file = find_metadata(root)
    if metadata_file is None:
        raise DatasetError(f"{root}: no metadata file (expected one of {', '.join(METADATA_NAMES)})")
    frame = _read_metadata(metadata_file)
    images = _list_files(root, IMAGE_DIRS, IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{root}: no image folder with images (expected one of {', '.join(IMAGE_DIRS)})")
    masks = _list_files(root, MASK_DIRS, (MASK_SUFFIX,))
    frame["path"] = _lookup(frame["image_id"], images)
    frame["mask_path"] = _lookup(frame["image_id"] + "_segmentation", masks)
    frame = _tidy(frame, metadata_file)
    validate_dataset(frame)
    return frame


def _read_metadata(path: Path) -> pd.DataFrame:
    """Read a comma- or tab-separated metadata file, checking its columns."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            first_line = handle.readline()
        sep = "\t" if "\t" in first_line else ","
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{path.name}: the metadata file is empty") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DatasetError(f"{path}: cannot read metadata ({str(err).splitlines()[0]})") from err
    frame.columns = [str(c).strip().strip('"').lower() for c in frame.columns]
    _require_columns(frame, METADATA_COLUMNS, path)
    return frame


def _require_columns(frame: pd.DataFrame, required, source) -> None:
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    hints = []
    for column in missing:
        close = difflib.get_close_matches(column, list(frame.columns), n=1, cutoff=0.6)
        hints.append(f"{column} (renamed to {close[0]!r}?)" if close else column)
    raise DatasetError(
        f"{source}: missing column(s) {', '.join(hints)}; found columns {list(frame.columns)}"
    )


def _list_files(root: Path, folders, suffixes) -> dict:
    """Map file stem -> path for files in ``folders`` under ``root``, one listing per folder.

    A directory listing instead of one ``stat`` per row keeps loading the
    10,015 images of HAM10000 fast.
    """
    found = {}
    for folder in folders:
        directory = root / folder
        if not directory.is_dir():
            continue
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                lower = name.lower()
                if not name.startswith(".") and lower.endswith(suffixes):
                    found[name[: name.rfind(".")]] = entry.path
    return found


def _lookup(keys: pd.Series, found: dict) -> pd.Series:
    """The path of each key in ``found``, empty when absent."""
    if not found:
        return pd.Series("", index=keys.index, dtype="str")
    return keys.map(found).fillna("").astype("str")


def _tidy(frame: pd.DataFrame, source) -> pd.DataFrame:
    """Normalise values and column order; missing sex/site become ``unknown``."""
    frame = frame.copy()
    for column in ("image_id", "lesion_id", "dx", "dx_type", "sex", "localization"):
        frame[column] = frame[column].fillna("").astype(str).str.strip().str.strip('"')
    frame["dx"] = frame["dx"].str.lower()
    for column in ("dx_type", "sex", "localization"):
        frame[column] = frame[column].replace("", UNKNOWN)
    frame["age"] = _parse_ages(frame["age"], source)
    frame = frame[list(TABLE_COLUMNS) + [c for c in frame.columns if c not in TABLE_COLUMNS]]
    frame = frame.reset_index(drop=True)
    frame.attrs["source"] = str(source)
    return frame


def _parse_ages(ages: pd.Series, source) -> pd.Series:
    """Ages as floats; empty or ``NA`` means missing, anything else unparsable is an error."""
    text = ages.astype(str).str.strip().str.strip('"')
    empty = text.isin(["", "nan", "NaN", "NA", "null", "None"]) | ages.isna()
    numbers = pd.to_numeric(text.where(~empty), errors="coerce")
    bad = numbers.isna() & ~empty
    if bad.any():
        examples = sorted(set(text[bad]))[:3]
        raise DatasetError(f"{source}: {int(bad.sum())} age value(s) are not numbers, e.g. {examples}")
    return numbers.astype("float64")


def validate_dataset(
    frame: pd.DataFrame, check_images: bool = False, allow_unknown_labels: bool = False
) -> None:
    """Check an image table; raise on the first problem found.

    The default is cheap (columns, labels, duplicates, image files found by the
    loader's directory listing). ``check_images=True`` also decodes every image
    and mask, which takes a while on the full dataset.

    Args:
        frame: an image table from one of the loaders.
        check_images: decode every image (and mask) to catch unreadable files.
        allow_unknown_labels: accept ``dx`` values outside ``CLASSES``.

    Raises:
        DatasetError: naming the source file and the problem.
    """
    source = frame.attrs.get("source", "dataset")
    _require_columns(frame, TABLE_COLUMNS, source)
    unknown = sorted(set(frame["dx"]) - set(CLASSES))
    if unknown and not allow_unknown_labels:
        raise DatasetError(f"{source}: unknown label(s) {unknown} in column dx; known labels are {list(CLASSES)}")
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{source}: {len(duplicated)} duplicate image id(s), e.g. {sorted(set(duplicated))[:3]}"
        )
    missing = frame["image_id"][frame["path"] == ""]
    if len(missing):
        raise DatasetError(
            f"{source}: {len(missing)} image file(s) not found, e.g. {list(missing[:3])}"
        )
    if check_images:
        _decode_all(frame, source)


def _decode_all(frame: pd.DataFrame, source) -> None:
    """Decode every image and mask as training does; raise naming the first unreadable file."""
    reads = [(path, read_image) for path in frame["path"]] + [(path, read_mask) for path in frame["mask_path"] if path]
    for path, read in reads:
        try:
            read(path)
        except (ImageError, OSError) as err:
            raise DatasetError(f"{path}: unreadable image ({err}) (listed in {source})") from err


def data_facts(frame: pd.DataFrame) -> dict:
    """Facts about the data that are not errors: missing ages, unknown sex or site, counts.

    Returns:
        A dict with ``images``, ``lesions``, ``classes`` (images per label),
        ``missing_age``, ``unknown_sex``, ``unknown_localization``,
        ``unknown_dx_type``, ``unknown_labels`` (labels outside ``CLASSES``)
        and ``masks`` (images with a mask).
    """
    counts = frame["dx"].value_counts()
    return {
        "images": int(len(frame)),
        "lesions": int(frame["lesion_id"].nunique()),
        "classes": {str(k): int(v) for k, v in counts.items()},
        "missing_age": int(frame["age"].isna().sum()),
        "unknown_sex": int((frame["sex"] == UNKNOWN).sum()),
        "unknown_localization": int((frame["localization"] == UNKNOWN).sum()),
        "unknown_dx_type": int((frame["dx_type"] == UNKNOWN).sum()),
        "unknown_labels": sorted(str(k) for k in counts.index if k not in CLASSES),
        "masks": int((frame["mask_path"] != "").sum()),
    }


def _filled_table(image_ids, labels, paths, source, masks=None) -> pd.DataFrame:
    """An image table for sets without HAM10000 metadata: each image its own lesion."""
    image_ids = pd.Series(list(image_ids), dtype=str)
    frame = pd.DataFrame(
        {
            "image_id": image_ids,
            "lesion_id": image_ids,
            "dx": list(labels),
            "dx_type": UNKNOWN,
            "age": np.nan,
            "sex": UNKNOWN,
            "localization": UNKNOWN,
            "path": [paths.get(i, "") for i in image_ids],
            "mask_path": [(masks or {}).get(f"{i}_segmentation", "") for i in image_ids],
        }
    )
    return _tidy(frame, source)


def load_isic_csv(csv: Path, images_dir: Path, masks_dir: Path | None = None) -> pd.DataFrame:
    """Read an ISIC one-hot ground-truth CSV (``image`` + one column per class).

    Class columns may be upper case (``MEL, NV, BCC, AKIEC, BKL, DF, VASC``;
    ``AK`` is read as ``akiec``). Without HAM10000 metadata every image is its
    own lesion, ages are missing and sex, site and dx_type are ``unknown``.

    Args:
        csv: the ground-truth CSV.
        images_dir: the folder of ``<image>.jpg`` files.
        masks_dir: an optional folder of ``<image>_segmentation.png`` masks.

    Raises:
        DatasetError: missing columns, rows without exactly one class, unknown
            classes, duplicates or missing images.
    """
    csv = Path(csv)
    try:
        table = pd.read_csv(csv, dtype={"image": str})
    except (OSError, pd.errors.ParserError) as err:
        raise DatasetError(f"{csv}: cannot read ground truth ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    if "image" not in table.columns:
        raise DatasetError(f"{csv}: missing column image; found columns {list(table.columns)}")
    class_columns = [c for c in table.columns if c != "image" and c.lower() != "score_weight"]
    onehot = table[class_columns].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()
    bad = np.flatnonzero((onehot > 0.5).sum(axis=1) != 1)
    if len(bad):
        raise DatasetError(
            f"{csv}: {len(bad)} row(s) without exactly one class set, e.g. images {list(table['image'].iloc[bad[:3]])}"
        )
    names = [CLASS_FOLDER_NAMES.get(c.lower(), c.lower()) for c in class_columns]
    labels = [names[k] for k in onehot.argmax(axis=1)]
    if not Path(images_dir).is_dir():
        raise DatasetError(f"{images_dir}: image folder not found (for {csv})")
    images = _list_files(Path(images_dir), (".",), IMAGE_SUFFIXES)
    masks = _list_files(Path(masks_dir), (".",), (MASK_SUFFIX,)) if masks_dir else None
    frame = _filled_table(table["image"].str.strip(), labels, images, csv, masks)
    validate_dataset(frame)
    return frame


def class_folder_label(name: str) -> str:
    """Our class code for a class-folder name, or the normalised name when unknown."""
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    return CLASS_FOLDER_NAMES.get(key, key)


def load_class_folders(root: Path) -> pd.DataFrame:
    """Read a class-per-folder tree (``Train/<class>/*.jpg``, ``Test/<class>/*.jpg``).

    ``root`` holds either ``Train``/``Test`` (any case) folders of class folders,
    or the class folders themselves. Folder names map to our codes through
    ``CLASS_FOLDER_NAMES`` (e.g. the 9-class ISIC Kaggle set: "actinic keratosis"
    -> akiec, "pigmented benign keratosis" and "seborrheic keratosis" -> bkl,
    "nevus" -> nv, "vascular lesion" -> vasc). Unknown class names (e.g.
    "squamous cell carcinoma") are kept, reported with a warning and in
    ``frame.attrs["unknown_classes"]``. An extra column ``subset`` names the
    top folder (``train``, ``test`` or empty).

    Raises:
        DatasetError: no class folders, duplicate image ids.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    subsets = [d for d in _subdirs(root) if d.name.lower() in ("train", "test", "val", "valid", "validation")]
    rows = []
    for subset_dir in subsets or [root]:
        subset = subset_dir.name.lower() if subsets else ""
        for class_dir in _subdirs(subset_dir):
            files = _list_files(class_dir, (".",), IMAGE_SUFFIXES)
            label = class_folder_label(class_dir.name)
            rows += [(stem, label, path, subset) for stem, path in sorted(files.items())]
    if not rows:
        raise DatasetError(f"{root}: no class folders with images (expected Train/<class>/*.jpg or <class>/*.jpg)")
    ids, labels, paths, subset_names = zip(*rows)
    duplicates = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(duplicates):
        raise DatasetError(f"{root}: {len(duplicates)} duplicate image id(s), e.g. {sorted(set(duplicates))[:3]}")
    frame = _filled_table(ids, labels, dict(zip(ids, paths)), root)
    frame["subset"] = list(subset_names)
    unknown = sorted(set(labels) - set(CLASSES))
    frame.attrs["unknown_classes"] = unknown
    if unknown:
        warnings.warn(f"{root}: class folder(s) with no HAM10000 class kept as-is: {unknown}", stacklevel=2)
    validate_dataset(frame, allow_unknown_labels=True)
    return frame


def _subdirs(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
