"""A tiny untrained segmenter saved as a segmenter folder, for CLI, page and browser tests."""

from pathlib import Path

import pandas as pd

from core.training import segmenter
SIZE = (32, 32)


def save_tiny_segmenter(folder: Path, threshold: float = 0.5, seed: int = 0) -> Path:
    """Build the project's U-Net at 32×32 with random weights and write ``model.keras`` + ``model.json``.

    ``threshold`` 0 makes every pixel lesion and above 1 none: pages then behave deterministically.
    """
    import keras

    keras.utils.set_random_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    segmenter.build_segmenter(SIZE, weights="none").save(folder / "model.keras")
    segmenter.write_segmenter_metadata(folder, segmenter.metadata(*SIZE, threshold=threshold,
                                                                  split_sha256="fixture-split", weights="none"))
    return folder


def write_scores(folder: Path, split: str, image_ids, dx, dice) -> Path:
    """A ``scores_<split>.csv`` with consistent Dice, Jaccard and thresholded Jaccard."""
    from core.evaluation.segmentation_metrics import ISIC_JACCARD_THRESHOLD, scores_path

    table = pd.DataFrame({"image_id": list(image_ids), "lesion_id": [f"L{i}" for i in range(len(dx))],
                          "dx": list(dx), "dice": list(dice)})
    table["jaccard"] = table["dice"] / (2 - table["dice"])
    table["thresholded_jaccard"] = table["jaccard"].where(table["jaccard"] >= ISIC_JACCARD_THRESHOLD, 0.0)
    Path(folder).mkdir(parents=True, exist_ok=True)
    table.to_csv(scores_path(folder, split), index=False)
    return scores_path(folder, split)
