"""core.dataset.explore filters and aggregates against values computed by hand."""


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.dataset import data, explore
from core.dataset.explore import Filters

ROWS = [
    # image_id, lesion_id, dx, dx_type, age, sex, localization
    ("I1", "L1", "mel", "histo", 40.0, "male", "back"),
    ("I2", "L1", "mel", "histo", 40.0, "male", "back"),
    ("I3", "L2", "nv", "follow_up", 25.0, "female", "face"),
    ("I4", "L3", "nv", "follow_up", np.nan, "unknown", "back"),
    ("I5", "L4", "bcc", "histo", 70.0, "female", "unknown"),
    ("I6", "L5", "nv", "consensus", 55.0, "male", "face"),
    ("I7", "L5", "nv", "consensus", 55.0, "male", "face"),
    ("I8", "L5", "nv", "consensus", 55.0, "male", "face"),
]


@pytest.fixture
def frame() -> pd.DataFrame:
    table = pd.DataFrame(ROWS, columns=["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"])
    table["path"] = table["image_id"] + ".jpg"
    table["mask_path"] = ""
    return table


def _ids(frame: pd.DataFrame) -> list:
    return list(frame["image_id"])


def test_no_filter_keeps_everything(frame):
    assert _ids(explore.filter_frame(frame, Filters())) == _ids(frame)


def test_each_filter(frame):
    assert _ids(explore.filter_frame(frame, Filters(classes=("mel", "bcc")))) == ["I1", "I2", "I5"]
    assert _ids(explore.filter_frame(frame, Filters(sexes=("female",)))) == ["I3", "I5"]
    assert _ids(explore.filter_frame(frame, Filters(sites=("face",)))) == ["I3", "I6", "I7", "I8"]
    assert _ids(explore.filter_frame(frame, Filters(dx_types=("histo",)))) == ["I1", "I2", "I5"]


def test_age_range_is_inclusive_and_missing_ages_optional(frame):
    assert _ids(explore.filter_frame(frame, Filters(age_range=(40, 55)))) == ["I1", "I2", "I4", "I6", "I7", "I8"]
    no_missing = Filters(age_range=(40, 55), include_missing_age=False)
    assert _ids(explore.filter_frame(frame, no_missing)) == ["I1", "I2", "I6", "I7", "I8"]


def test_filters_combine(frame):
    combined = Filters(classes=("nv",), sexes=("male", "unknown"), age_range=(0, 50), include_missing_age=True)
    assert _ids(explore.filter_frame(frame, combined)) == ["I4"]


def test_overview(frame):
    summary = explore.overview(frame)
    assert summary["images"] == 8 and summary["lesions"] == 5
    assert summary["images_per_lesion"].to_dict() == {1: 3, 2: 1, 3: 1}
    assert summary["missing"].loc["age", "missing"] == 1
    assert summary["missing"].loc["sex", "unknown"] == 1
    assert summary["missing"].loc["localization", "unknown"] == 1
    assert summary["dx_types"].to_dict() == {"histo": 3, "consensus": 3, "follow_up": 2}


def test_class_distribution_lists_every_class(frame):
    table = explore.class_distribution(frame)
    assert list(table.index) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert table["images"].to_dict() == {"akiec": 0, "bcc": 1, "bkl": 0, "df": 0, "mel": 2, "nv": 5, "vasc": 0}
    assert table.loc["nv", "lesions"] == 3
    assert table.loc["nv", "share"] == pytest.approx(5 / 8)


def test_age_by_class_and_summary(frame):
    ages = explore.age_by_class(frame)
    assert len(ages) == 7 and ages["age"].notna().all()
    summary = explore.age_summary(frame)
    assert summary.loc["nv", "median"] == 55.0
    assert summary.loc["nv", "missing"] == 1 and summary.loc["nv", "with_age"] == 4


def test_cross_tables(frame):
    sex = explore.by_class(frame, "sex")
    assert list(sex.index) == ["male", "female", "unknown"]  # by total, descending
    assert sex.loc["male", "nv"] == 3 and sex.loc["male", "mel"] == 2 and sex.loc["female", "bcc"] == 1
    assert sex.loc["male", "akiec"] == 0
    share = explore.by_class(frame, "localization", normalize=True)
    assert share.loc["face", "nv"] == pytest.approx(4 / 5)
    assert share["nv"].sum() == pytest.approx(1.0)
    dx_type = explore.by_class(frame, "dx_type")
    assert dx_type.loc["consensus", "nv"] == 3 and dx_type.loc["histo"].sum() == 3


def test_page_aggregates_follow_the_filter(frame):
    result = explore.page_aggregates(frame, Filters(sites=("face",)))
    assert result["overview"]["images"] == 4 and result["overview"]["lesions"] == 2
    assert result["classes"]["images"].sum() == 4
    assert result["sex"].to_numpy().sum() == 4


def test_lesion_images(frame):
    assert _ids(explore.lesion_images(frame, "L5")) == ["I6", "I7", "I8"]
    assert explore.lesion_images(frame, "nope").empty


def test_mask_outline_is_the_boundary():
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:5, 2:5] = True
    outline = explore.mask_outline(mask)
    assert outline.sum() == 8 and not outline[3, 3] and outline[2, 2]


def test_outlined_image_resizes_mask_and_draws(tmp_path):
    Image.fromarray(np.full((60, 80, 3), 100, dtype=np.uint8)).save(tmp_path / "i.png")
    mask = np.zeros((15, 20), dtype=np.uint8)  # a smaller mask than the image
    mask[4:11, 5:15] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    plain = explore.outlined_image(str(tmp_path / "i.png"))
    drawn = np.asarray(explore.outlined_image(str(tmp_path / "i.png"), str(tmp_path / "m.png"), color=(0, 255, 0)))
    assert plain.size == (80, 60) and (np.asarray(plain) == 100).all()
    green = (drawn == (0, 255, 0)).all(axis=2)
    assert green[16, 30] and not green[30, 40] and not green[0, 0]
    small = explore.outlined_image(str(tmp_path / "i.png"), max_width=40)
    assert small.size == (40, 30)
    (tmp_path / "bad.png").write_bytes(b"not a mask")
    assert "unreadable" in explore.outlined_image(str(tmp_path / "i.png"), str(tmp_path / "bad.png")).info["mask_error"]


def test_the_gallery_decodes_as_training_and_serving_do(tmp_path):
    from core.dataset.images import read_image
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0], rgba[:15, :, 3] = 200, 255  # half transparent: composited on white, as an upload is
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert np.array_equal(np.asarray(explore.outlined_image(str(tmp_path / "t.png"))), read_image(tmp_path / "t.png"))


def test_real_filter_and_aggregates(real_dataset_dir):
    frame = data.load_dataset(real_dataset_dir)
    filters = Filters(classes=("mel", "nv", "bkl"), sexes=("male",), age_range=(30, 70), sites=("back", "trunk"))
    result = explore.page_aggregates(frame, filters)
    keep = frame["dx"].isin(["mel", "nv", "bkl"]) & (frame["sex"] == "male")
    keep &= frame["localization"].isin(["back", "trunk"]) & (frame["age"].between(30, 70) | frame["age"].isna())
    expected = frame[keep]
    assert result["overview"]["images"] == len(expected) > 0


def test_search_matches_part_of_an_image_or_lesion_id(frame):
    assert _ids(explore.filter_frame(frame, Filters(search=" l5 "))) == ["I6", "I7", "I8"]
    assert _ids(explore.filter_frame(frame, Filters(search="i3"))) == ["I3"]
    assert _ids(explore.filter_frame(frame, Filters(search="L1", classes=("nv",)))) == []


def test_shares_of_a_removed_class_are_empty_not_zero(frame):
    share = explore.by_class(explore.filter_frame(frame, Filters(classes=("nv",))), "sex", normalize=True)
    assert share["mel"].isna().all() and share["akiec"].isna().all()
    assert share["nv"].sum() == pytest.approx(1.0)
    counts = explore.by_class(explore.filter_frame(frame, Filters(classes=("nv",))), "sex")
    assert (counts["mel"] == 0).all()  # counts stay counts


def test_age_boxes_give_tukey_numbers_per_class(frame):
    boxes = explore.age_boxes(frame)
    assert list(boxes.index) == ["bcc", "mel", "nv"]  # the fixed class order, classes with an age only
    nv = boxes.loc["nv"]  # ages 25, 55, 55, 55 (one missing)
    assert nv["n"] == 4 and nv["median"] == 55.0 and nv["q1"] == pytest.approx(47.5) and nv["q3"] == 55.0
    assert nv["lowerfence"] == 55.0 and nv["upperfence"] == 55.0  # 25 lies beyond 1.5 IQR below the box
