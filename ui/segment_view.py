"""The lesion-segmentation section of the Predict page: outline, ABCD measurements, saliency inside the lesion.

The segmenter (``models/segmenter`` or ``HAM_SEGMENTER``) is cached per
(folder, modification time); masks are cached per image content.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.serving import lesion_measures

from core.contracts import paths

from core.evaluation import segmentation_metrics
from core.explaining.faithfulness import energy_in_mask
from core.serving.modelio import METADATA_FILE, MODEL_FILE, ModelFolderError
from core.explaining.saliency import draw_outline
from ui.guard import guarded, public
from ui.text import NOT_A_DEVICE

KEY_OUTLINE = "predict_segment_outline"
PREDICTED_COLOUR = (255, 215, 0)  # yellow: the segmenter's outline
TRUE_COLOUR = (0, 200, 0)  # green: the dataset's mask, as on the rest of the page
ABCD_RULE = ("The **ABCD rule** of dermoscopy scores a pigmented lesion by its **A**symmetry, **B**order, "
             "**C**olours and **D**ermoscopic structures; higher totals point towards melanoma. The figures below "
             "are rough, scale-free illustrations of A, B and C computed from the predicted outline.")


def segmenter_available() -> bool:
    """True when the shipped segmenter folder holds a model and its metadata."""
    folder = paths.segmenter_dir()
    return (folder / MODEL_FILE).is_file() and (folder / METADATA_FILE).is_file()


@st.cache_resource(max_entries=1, show_spinner="Loading the lesion segmenter…")
def _segmenter(path: str, mtime: int):
    """The segmenter of a folder, warmed up; ``mtime`` is only a cache key."""
    from core.serving.segment import Segmenter

    segmenter = Segmenter(Path(path))
    segmenter.warmup()
    return segmenter


def load_segmenter():
    """The cached, warmed-up :class:`core.serving.segment.Segmenter` of the shipped segmenter folder."""
    folder = paths.segmenter_dir()
    mtime = max((folder / f).stat().st_mtime_ns for f in (MODEL_FILE, METADATA_FILE))
    return _segmenter(str(folder.resolve()), mtime)


@st.cache_data(max_entries=32, show_spinner="Segmenting the lesion…")
def _mask(path: str, digest: str, _rgb: np.ndarray) -> np.ndarray:
    """The predicted mask of one image, cached by segmenter and image content (``_rgb`` is not hashed)."""
    return load_segmenter().segment(_rgb)


def predicted_mask(image) -> np.ndarray | None:
    """The predicted lesion mask of a Predict-page image, or None (with a note) when there is no segmenter."""
    if not segmenter_available():
        st.info("No lesion segmenter is installed (models/segmenter, or HAM_SEGMENTER): no outline or measurements.")
        return None
    try:
        return _mask(str(paths.segmenter_dir().resolve()), image.digest, _rgb=image.rgb)
    except (ModelFolderError, OSError, ValueError) as err:
        st.error(f"The lesion segmenter cannot be used: {public(err)}")
        return None


def outlined(rgb: np.ndarray, mask: np.ndarray | None, true_mask: np.ndarray | None = None) -> np.ndarray:
    """The image with the predicted outline in yellow and, when known, the dataset's in green."""
    out = rgb if true_mask is None else draw_outline(rgb, true_mask, color=TRUE_COLOUR)
    return out if mask is None or not mask.any() else draw_outline(out, mask, color=PREDICTED_COLOUR)


def measurements_table(rgb: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """The measurements of one lesion as rows ``measurement, value, what it means``."""
    m = lesion_measures.measure(rgb, mask)
    explain = lesion_measures.EXPLANATIONS
    rows = [("Area share", f"{m['area_share']:.1%}", explain["area_share"]),
            ("Asymmetry (major / minor axis)",
             f"{m['asymmetry_major']:.2f} / {m['asymmetry_minor']:.2f} → {m['asymmetric_axes']} asymmetric axis(es)",
             explain["asymmetry"]),
            ("Border compactness", f"{m['compactness']:.2f}", explain["compactness"]),
            ("Colours", f"{m['colours']} ({m['colour_names'] or 'none'})", explain["colours"])]
    return pd.DataFrame(rows, columns=["measurement", "value", "what it means"])


@guarded("The lesion segmentation")
def show_segmentation(image) -> np.ndarray | None:
    """The outline (toggle), agreement with the dataset's mask, and the ABCD measurements; returns the mask."""
    mask = predicted_mask(image)
    if mask is None:
        return None
    show = st.toggle("Show the predicted lesion outline", value=True, key=KEY_OUTLINE)
    left, right = st.columns([2, 3])
    with left:
        picture = outlined(image.rgb, mask, image.mask) if show else image.rgb
        legend = " (predicted in yellow" + (", dataset mask in green)" if image.mask is not None else ")")
        st.image(picture, caption="Lesion outline" + (legend if show else " hidden"), width="stretch")
        if image.mask is not None:
            truth = np.asarray(image.mask, dtype=bool)
            if truth.shape == mask.shape:
                st.caption(f"Agreement with the dataset's mask: Dice {segmentation_metrics.dice(truth, mask):.3f}.")
    with right:
        if not mask.any():
            st.warning("The segmenter found no lesion in this image, so there is nothing to measure.")
        else:
            st.markdown(ABCD_RULE)
            st.table(measurements_table(image.rgb, mask).set_index("measurement"))  # a static table wraps its text
        st.caption(NOT_A_DEVICE)
    return mask


def saliency_energy_caption(saliency_map: np.ndarray, mask: np.ndarray | None, method: str) -> None:
    """One line: the share of the saliency map's mass inside the predicted lesion."""
    if mask is None or not np.asarray(mask).any():
        return
    share = energy_in_mask(saliency_map, mask)
    area = lesion_measures.area_share(mask)
    st.caption(f"{method}: {share:.0%} of the map's mass lies inside the predicted lesion, which covers "
               f"{area:.0%} of the image (a map blind to the lesion would put about {area:.0%} there).")
