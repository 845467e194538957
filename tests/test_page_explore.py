"""AppTest of the Explore page (app_pages/explore.py) on the tiny dataset, the real one, and no dataset at all."""

from pathlib import Path

import pandas as pd
import pytest
from conftest import open_page, write_tiny_dataset
from streamlit.testing.v1 import AppTest

from core.dataset import download
PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "explore.py")
pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


def _run(timeout: float = 60) -> AppTest:
    at = open_page(PAGE, timeout=timeout).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def _captions(at: AppTest) -> list:
    return [image.proto.imgs[0].caption for image in at.get("image")]


def test_tiny_dataset_draws_every_part(tiny_dataset_env):
    at = _run()
    assert _metrics(at)["Images"] == "63" and _metrics(at)["Lesions"] == "42"
    assert len(at.get("plotly_chart")) == 5
    assert len(at.get("image")) == 12
    assert at.number_input(key="explore_page").label == "Page (of 6)"


def test_class_filter_updates_counts_and_gallery(tiny_dataset_env):
    at = _run()
    at.button_group(key="explore_classes").set_value(["mel"]).run()
    assert _metrics(at)["Images"] == "9" and _metrics(at)["Lesions"] == "6"
    captions = _captions(at)
    assert len(captions) == 9 and all(" · MEL · " in c for c in captions)


def test_charts_follow_the_filter_and_leave_removed_classes_empty(tiny_dataset_env):
    import json

    at = _run()
    at.button_group(key="explore_classes").set_value(["mel"])
    at.toggle(key="explore_normalize").set_value(True).run()
    specs = {spec["layout"]["title"]["text"]: spec for spec in
             (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))}
    assert set(specs) == {"Images per class", "Age by class", "Sex by class", "Diagnosis confirmed by",
                          "Body site by class"}
    bars = specs["Images per class"]["data"][0]
    assert dict(zip(bars["x"], bars["y"]))["mel"] == 9 and sum(bars["y"]) == 9
    sex = specs["Sex by class"]["data"][0]
    mel = sex["x"].index("mel")
    for row, text in zip(sex["z"], sex["text"]):
        assert all(v is None for i, v in enumerate(row) if i != mel)  # a removed class has no share, not 0 %
        assert all(t == "" for i, t in enumerate(text) if i != mel)
    assert abs(sum(row[mel] for row in sex["z"]) - 1) < 1e-9  # shares of the class sum to one
    assert [trace["x"] for trace in specs["Age by class"]["data"]] == [["mel"]]


def test_age_and_site_filters(tiny_dataset_env):
    source = pd.read_csv(tiny_dataset_env / "HAM10000_metadata.csv")
    at = _run()
    at.slider(key="explore_ages").set_value((20, 50))
    at.checkbox(key="explore_missing_age").uncheck()
    at.multiselect(key="explore_sites").set_value(["back"]).run()
    expected = source[source["age"].between(20, 50) & (source["localization"] == "back")]
    assert _metrics(at)["Images"] == str(len(expected))


def test_nothing_matches(tiny_dataset_env):
    at = _run()
    at.multiselect(key="explore_sites").set_value(["back"])
    at.button_group(key="explore_dx_types").set_value(["confocal"]).run()
    source = pd.read_csv(tiny_dataset_env / "HAM10000_metadata.csv")
    hits = source[(source["localization"] == "back") & (source["dx_type"] == "confocal")]
    assert hits.empty  # the generator cycles both columns in step, so never together
    assert _metrics(at)["Images"] == "0"
    assert any("No image matches" in i.value for i in at.info)


def test_lesion_opens_in_a_dialog_named_in_the_url(tiny_dataset_env):
    at = _run()
    button = next(b for b in at.button if "(2 images)" in b.label)
    button.click().run()
    image_id = at.query_params["image"]
    assert any(f"2 image(s) of the same lesion, **{image_id}** first" in m.value for m in at.markdown)
    assert len(at.get("image")) == 12 + 2
    at.button(key="explore_close_lesion").click().run()
    assert "image" not in at.query_params
    assert len(at.get("image")) == 12


def test_a_pasted_link_restores_filters_and_lesion(tiny_dataset_env):
    at = open_page(PAGE, timeout=60)
    # the address the page writes: pills by their label, the open lesion by its id
    at.query_params.update({"explore_classes": "MEL", "explore_page": "1", "image": "ISIC_9000037"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _metrics(at)["Images"] == "9"
    assert any("2 image(s) of the same lesion, **ISIC_9000037** first" in m.value for m in at.markdown)


def test_search_by_image_or_lesion_id(tiny_dataset_env):
    at = _run()
    at.text_input(key="explore_search").set_value("ham_0400001").run()  # case-insensitive
    assert _metrics(at)["Images"] == "2" and _metrics(at)["Lesions"] == "1"
    at.text_input(key="explore_search").set_value("ISIC_9000000").run()
    assert _metrics(at)["Images"] == "1"


def test_download_holds_the_filtered_rows(tiny_dataset_env):
    at = _run()
    at.button_group(key="explore_classes").set_value(["df"]).run()
    button = next(b for b in at.get("download_button") if "CSV" in b.proto.label)
    assert button.proto.label == "Download 9 rows (CSV)"


def test_gallery_pages(tiny_dataset_env):
    at = _run()
    first = _captions(at)
    at.number_input(key="explore_page").set_value(6).run()
    last = _captions(at)
    assert len(last) == 63 - 5 * 12 and not set(first) & set(last)


def test_no_dataset_panel_and_download_button(tmp_path, monkeypatch):
    target = tmp_path / "ham10000"
    monkeypatch.setenv("HAM10000_DIR", str(target))
    calls = []

    def fake_download(dest, progress, **kwargs):
        calls.append(Path(dest))
        progress(50, 100, "HAM10000_images_part_1.zip")
        return write_tiny_dataset(Path(dest))

    monkeypatch.setattr(download, "download_ham10000", fake_download)
    at = _run()
    assert any("No HAM10000 dataset" in w.value for w in at.warning)
    assert any("HAM10000_DIR=" in m.value for m in at.main.markdown)
    at.button[0].click().run()
    assert calls == [target]
    assert _metrics(at)["Images"] == "63"


def test_unusable_dataset_names_the_problem(tiny_dataset_env):
    metadata = tiny_dataset_env / "HAM10000_metadata.csv"
    pd.read_csv(metadata).drop(columns=["dx"]).to_csv(metadata, index=False)
    at = _run()
    assert "missing column(s) dx" in at.error[0].value
    assert at.button[0].disabled


def test_real_dataset_page_and_filter(real_dataset_dir, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(real_dataset_dir))
    at = _run(timeout=120)
    assert _metrics(at)["Images"] == "10,015" and _metrics(at)["Lesions"] == "7,470"
    assert _metrics(at)["Missing ages"] == "57"
    at.multiselect(key="explore_sites").set_value(["face"]).run()
    assert _metrics(at)["Images"] == "745"
    assert len(at.get("image")) == 12 and all(c.endswith("· face") for c in _captions(at))


def test_the_downloaded_csv_is_the_filtered_rows_without_local_paths(tiny_dataset_env):
    import io

    import pandas as pd

    from core.dataset.data import load_dataset
    from ui import explore as view

    frame = load_dataset(tiny_dataset_env)
    selected = frame[frame["dx"] == "df"]
    table = pd.read_csv(io.BytesIO(view.table_csv(selected)))
    assert list(table.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert sorted(table["image_id"]) == sorted(selected["image_id"]) and set(table["dx"]) == {"df"}
