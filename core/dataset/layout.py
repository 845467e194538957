"""File names of the HAM10000 layouts (stdlib only, so pages can check for a dataset cheaply).

``core.dataset.data`` reads these layouts; this module only names them, without
importing pandas, so the Home page can say whether a dataset is present
without paying for a pandas import.
"""

from pathlib import Path

METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab")
IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
MASK_DIRS = ("masks", "HAM10000_segmentations_lesion_tschandl")
MASK_SUFFIX = "_segmentation.png"


def find_metadata(root: Path) -> Path | None:
    """The metadata file of a HAM10000 folder, or None when there is none."""
    root = Path(root)
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    return None
