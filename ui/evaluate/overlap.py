"""Evaluate page: what an external test set shares with the model's own data, and metrics without it."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.evaluation import evaluate

from core.dataset import leakage

from core.contracts import predictions
from ui.evaluate.common import Source, fmt_ci, mtime

HEADLINE = ("balanced_accuracy", "macro_auc")


@st.cache_data(max_entries=8, show_spinner=False)
def _read_csv(path: str, mtime: int) -> pd.DataFrame:
    return predictions.read_csv(path, dtype=str).fillna("")


def overlap_panel(source: Source) -> None:
    """For an external set: the leakage check's finding, then headline metrics on all and on clean images."""
    if source.split != "external":
        return
    folder = Path(source.csv).parent
    found = json.loads((folder / evaluate.SOURCE_FILE).read_text(encoding="utf-8")).get("overlap")
    if found is None:
        st.info(f"Overlap with the model's data was not checked: the model folder carries no "
                f"`{leakage.SPLIT_FILE}` (the split it was trained on), so these images may include training images.")
        return
    if found["clean"] == found["n"]:
        st.success(leakage.describe(found))
        return
    st.warning(leakage.describe(found) + " Metrics on images the model has seen flatter it.", icon=":material/warning:")
    table = _clean_comparison(folder / evaluate.METRICS_FILE)
    if table is not None:
        st.dataframe(table, hide_index=True)
    with st.expander("Overlapping images"):
        report = _read_csv(str(folder / evaluate.OVERLAP_FILE), mtime(folder / evaluate.OVERLAP_FILE))
        st.dataframe(report[report["match"] != ""], hide_index=True)
        st.caption("Images of the model's test split were held out from training and tuning: they count as clean.")


def _clean_comparison(metrics_csv: Path) -> pd.DataFrame | None:
    """Headline metrics on every image beside those on the clean part, each with its n."""
    tidy = pd.read_csv(metrics_csv)
    tidy = tidy[(tidy["scope"] == "overall") & tidy["metric"].isin(HEADLINE)]
    if "external_clean" not in set(tidy["split"]):
        return None
    rows = []
    for split, label in (("external", "all images"), ("external_clean", "clean images only")):
        part = tidy[tidy["split"] == split].set_index("metric")
        row = {"images": label, "n": int(part["n"].iloc[0])}
        row.update({m: fmt_ci(*part.loc[m, ["value", "ci_low", "ci_high"]]) for m in HEADLINE if m in part.index})
        rows.append(row)
    return pd.DataFrame(rows)
