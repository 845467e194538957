"""Loaders for every layout, every validation error, data facts and the CLI of core.dataset.data."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import to_publisher_layout, write_tiny_dataset
from PIL import Image

from core.dataset import commands, data
from core.dataset.data import DatasetError
from core.contracts.labels import CLASSES


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"]
    return frame[columns].sort_values("image_id").reset_index(drop=True)


def test_project_layout_gives_the_table(tiny_dataset):
    frame = data.load_dataset(tiny_dataset)
    source = pd.read_csv(tiny_dataset / "HAM10000_metadata.csv")
    assert list(frame.columns) == list(data.TABLE_COLUMNS)
    assert len(frame) == len(source) == 63
    assert frame["lesion_id"].nunique() == 42
    assert set(frame["dx"]) == set(CLASSES)
    assert all(Path(p).name == f"{i}.jpg" and Path(p).is_file() for i, p in zip(frame["image_id"], frame["path"]))
    assert all(Path(m).name == f"{i}_segmentation.png" for i, m in zip(frame["image_id"], frame["mask_path"]))
    assert frame["age"].isna().sum() == source["age"].isna().sum() > 0
    assert frame.attrs["source"].endswith("HAM10000_metadata.csv")


@pytest.mark.parametrize("metadata_name", ["HAM10000_metadata", "HAM10000_metadata.csv", "HAM10000_metadata.tab"])
def test_publisher_layout_matches_project_layout(tmp_path, metadata_name):
    expected = _comparable(data.load_dataset(write_tiny_dataset(tmp_path / "a", size=(90, 60))))
    root = to_publisher_layout(write_tiny_dataset(tmp_path / "b", size=(90, 60)), metadata_name)
    frame = data.load_dataset(root)
    pd.testing.assert_frame_equal(_comparable(frame), expected)
    parts = {Path(p).parent.name for p in frame["path"]}
    assert parts == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert {Path(m).parent.name for m in frame["mask_path"]} == {"HAM10000_segmentations_lesion_tschandl"}


def test_tab_export_is_tab_separated_and_quoted(tmp_path):
    root = to_publisher_layout(write_tiny_dataset(tmp_path / "d"), "HAM10000_metadata.tab")
    first = (root / "HAM10000_metadata.tab").read_text().splitlines()[1]
    assert "\t" in first and first.startswith('"HAM_')
    assert not data.load_dataset(root)["lesion_id"].str.contains('"').any()


def test_one_image_folder_without_masks(tmp_path):
    root = write_tiny_dataset(tmp_path / "d")
    (root / "images").rename(root / "HAM10000_images")
    for mask in (root / "masks").iterdir():
        mask.unlink()
    frame = data.load_dataset(root)
    assert len(frame) == 63 and (frame["mask_path"] == "").all()
    assert data.data_facts(frame)["masks"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["dx"]), "missing column(s) dx"),
        (lambda f: f.rename(columns={"localization": "localisation"}), "localization (renamed to 'localisation'?)"),
        (lambda f: f.assign(dx=f["dx"].where(f.index != 5, "melanoma")), "unknown label(s) ['melanoma']"),
        (lambda f: pd.concat([f, f.iloc[[3]]]), "1 duplicate image id(s)"),
        (lambda f: f.assign(age=f["age"].astype(object).where(f.index != 2, "old")), "not numbers, e.g. ['old']"),
    ],
)
def test_metadata_problems_raise_naming_the_file(tiny_dataset, change, message):
    metadata = tiny_dataset / "HAM10000_metadata.csv"
    change(pd.read_csv(metadata)).to_csv(metadata, index=False)
    with pytest.raises(DatasetError) as err:
        data.load_dataset(tiny_dataset)
    assert message in str(err.value)
    assert str(metadata) in str(err.value)


def test_missing_image_file_is_reported(tiny_dataset):
    victim = sorted((tiny_dataset / "images").iterdir())[4]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"1 image file\\(s\\) not found, e.g. \\['{victim.stem}'\\]"):
        data.load_dataset(tiny_dataset)


def test_missing_folder_and_metadata_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        data.load_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no metadata file"):
        data.load_dataset(tmp_path)


def test_unreadable_image_found_only_by_decode_check(tiny_dataset):
    victim = sorted((tiny_dataset / "images").iterdir())[7]
    victim.write_bytes(b"\xff\xd8 this is not a jpeg")
    frame = data.load_dataset(tiny_dataset)  # the cheap default lists files, decodes nothing
    data.validate_dataset(frame)
    with pytest.raises(DatasetError, match=f"{victim}: unreadable image"):
        data.validate_dataset(frame, check_images=True)


def test_an_unreadable_mask_is_found_by_the_decode_check(tiny_dataset):
    frame = data.load_dataset(tiny_dataset)
    victim = Path(next(p for p in frame["mask_path"] if p))
    victim.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(DatasetError, match=f"{victim}: unreadable image"):
        data.validate_dataset(frame, check_images=True)


def test_data_facts_count_missing_and_unknown_values(tiny_dataset):
    source = pd.read_csv(tiny_dataset / "HAM10000_metadata.csv")
    facts = data.data_facts(data.load_dataset(tiny_dataset))
    assert facts["images"] == 63 and facts["lesions"] == 42 and facts["masks"] == 63
    assert facts["missing_age"] == int(source["age"].isna().sum())
    assert facts["unknown_sex"] == int((source["sex"] == "unknown").sum()) == 21
    assert facts["unknown_localization"] == int((source["localization"] == "unknown").sum())
    assert facts["classes"] == {dx: 9 for dx in CLASSES}
    assert facts["unknown_labels"] == []


def _write_images(folder: Path, ids, size=(30, 20)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image_id in enumerate(ids):
        Image.fromarray(np.full((size[1], size[0], 3), 20 * k, dtype=np.uint8)).save(folder / f"{image_id}.jpg")


def _isic_csv(tmp_path, rows, columns=("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")) -> Path:
    table = pd.DataFrame([[image] + [float(c == label) for c in columns] for image, label in rows],
                         columns=["image", *columns])
    path = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    table.to_csv(path, index=False)
    return path


def test_isic_csv_maps_upper_case_columns(tmp_path):
    rows = [("ISIC_0034524", "NV"), ("ISIC_0034525", "MEL"), ("ISIC_0034526", "AKIEC"), ("ISIC_0034527", "VASC")]
    _write_images(tmp_path / "images", [r[0] for r in rows])
    frame = data.load_isic_csv(_isic_csv(tmp_path, rows), tmp_path / "images")
    assert list(frame.columns) == list(data.TABLE_COLUMNS)
    assert list(frame["dx"]) == ["nv", "mel", "akiec", "vasc"]
    assert (frame["lesion_id"] == frame["image_id"]).all()
    assert frame["age"].isna().all() and (frame["sex"] == "unknown").all() and (frame["dx_type"] == "unknown").all()


def test_isic_csv_errors(tmp_path):
    _write_images(tmp_path / "images", ["ISIC_1", "ISIC_2"])
    csv = _isic_csv(tmp_path, [("ISIC_1", "MEL"), ("ISIC_2", "SCC")], columns=("MEL", "NV", "SCC"))
    with pytest.raises(DatasetError, match=r"unknown label\(s\) \['scc'\]"):
        data.load_isic_csv(csv, tmp_path / "images")
    csv.write_text("image,MEL,NV\nISIC_1,1.0,1.0\nISIC_2,0.0,1.0\n")
    with pytest.raises(DatasetError, match=r"without exactly one class set, e.g. images \['ISIC_1'\]"):
        data.load_isic_csv(csv, tmp_path / "images")
    csv.write_text("image,MEL,NV\nISIC_1,1.0,0.0\nISIC_3,0.0,1.0\n")
    with pytest.raises(DatasetError, match=r"image file\(s\) not found, e.g. \['ISIC_3'\]"):
        data.load_isic_csv(csv, tmp_path / "images")
    csv.write_text("name,MEL,NV\nISIC_1,1.0,0.0\n")
    with pytest.raises(DatasetError, match="missing column image"):
        data.load_isic_csv(csv, tmp_path / "images")


def test_class_folders_map_known_names_and_report_unknown(tmp_path):
    root = tmp_path / "isic9"
    _write_images(root / "Train" / "melanoma", ["ISIC_1", "ISIC_2"])
    _write_images(root / "Train" / "pigmented benign keratosis", ["ISIC_3"])
    _write_images(root / "Train" / "squamous cell carcinoma", ["ISIC_4"])
    _write_images(root / "Test" / "actinic_keratosis", ["ISIC_5"])
    _write_images(root / "Test" / "Vascular Lesion", ["ISIC_6"])
    with pytest.warns(UserWarning, match="squamous cell carcinoma"):
        frame = data.load_class_folders(root)
    by_id = frame.set_index("image_id")
    assert by_id["dx"].to_dict() == {"ISIC_1": "mel", "ISIC_2": "mel", "ISIC_3": "bkl",
                                     "ISIC_4": "squamous cell carcinoma", "ISIC_5": "akiec", "ISIC_6": "vasc"}
    assert by_id["subset"].to_dict() == {"ISIC_1": "train", "ISIC_2": "train", "ISIC_3": "train",
                                         "ISIC_4": "train", "ISIC_5": "test", "ISIC_6": "test"}
    assert frame.attrs["unknown_classes"] == ["squamous cell carcinoma"]
    assert data.data_facts(frame)["unknown_labels"] == ["squamous cell carcinoma"]
    with pytest.raises(DatasetError, match="unknown label"):
        data.validate_dataset(frame)


def test_class_folders_without_subsets_and_duplicates(tmp_path):
    _write_images(tmp_path / "flat" / "nv", ["ISIC_1"])
    _write_images(tmp_path / "flat" / "df", ["ISIC_2"])
    frame = data.load_class_folders(tmp_path / "flat")
    assert sorted(frame["dx"]) == ["df", "nv"] and set(frame["subset"]) == {""}
    _write_images(tmp_path / "dup" / "Train" / "nv", ["ISIC_1"])
    _write_images(tmp_path / "dup" / "Test" / "nv", ["ISIC_1"])
    with pytest.raises(DatasetError, match=r"1 duplicate image id\(s\), e.g. \['ISIC_1'\]"):
        data.load_class_folders(tmp_path / "dup")
    with pytest.raises(DatasetError, match="no class folders"):
        data.load_class_folders(tmp_path / "flat" / "nv")


def test_cli_validate_and_split(tiny_dataset, tmp_path, capsys):
    assert commands.main(["validate", str(tiny_dataset), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "images: 63" in out and "OK:" in out and "decoded every image" in out
    split_file = tmp_path / "split.csv"
    assert commands.main(["split", "--data-dir", str(tiny_dataset), "--seed", "3", "--out", str(split_file)]) == 0
    digest = capsys.readouterr().out.split("sha256 ")[1].strip()
    from core.dataset.splits import split_hash

    assert split_file.is_file() and digest == split_hash(split_file)
    (tiny_dataset / "HAM10000_metadata.csv").unlink()
    assert commands.main(["validate", str(tiny_dataset)]) == 2
    assert "no metadata file" in capsys.readouterr().err


def test_real_dataset_loads(real_dataset_dir):
    frame = data.load_dataset(real_dataset_dir)
    facts = data.data_facts(frame)
    assert facts["images"] == 10015 and facts["lesions"] == 7470 and facts["masks"] == 10015
    assert facts["missing_age"] == 57
    assert facts["classes"]["nv"] == 6705 and facts["classes"]["df"] == 115


def test_real_originals_read_as_class_folders(real_dataset_dir):
    originals = real_dataset_dir.parent / "ham10000_originals"
    if not originals.is_dir():
        pytest.skip(f"{originals} not found")
    frame = data.load_class_folders(originals)
    labels = pd.read_csv(originals / "labels.csv").set_index("image_id")["dx"]
    assert len(frame) == len(labels) == 70
    assert (frame.set_index("image_id")["dx"] == labels.reindex(frame["image_id"])).all()
    with Image.open(frame["path"].iloc[0]) as image:
        assert image.size == (600, 450)
