"""The optional age/sex/site branch: encoding, no change without metadata, the file, the fit, the command."""

import json

import numpy as np
import pandas as pd
import pytest

from core.contracts.labels import CLASSES
from core.serving import metadata_branch as mb
from core.training import metadata_fit

K = len(CLASSES)
D = len(mb.feature_names())


def _probs(rng, n):
    p = rng.dirichlet(np.ones(K), size=n)
    return p / p.sum(axis=1, keepdims=True)


def test_absent_fields_encode_as_zeros():
    assert not mb.encode().any()
    assert not mb.encode(age=float("nan"), sex="unknown", site="unknown").any()
    assert not mb.encode(age="", sex=" ", site=None).any()


@pytest.mark.parametrize("age, column", [(0, "age 0–29"), (29, "age 0–29"), (30, "age 30–44"), (74.9, "age 60–74"),
                                         (75, "age 75+"), (85, "age 75+")])
def test_age_bins(age, column):
    encoded = mb.encode(age=age)
    assert encoded.sum() == 1 and mb.feature_names()[int(encoded.argmax())] == column


def test_each_field_sets_its_own_column():
    encoded = mb.encode(age=50, sex="Female", site="Lower extremity")
    assert [mb.feature_names()[i] for i in np.flatnonzero(encoded)] == ["age 45–59", "sex female",
                                                                       "site lower extremity"]


@pytest.mark.parametrize("field, value, said", [("age", -1, "between 0 and 120"), ("age", 130, "between 0 and 120"),
                                                ("sex", "x", "male, female"), ("site", "elbow", "abdomen")])
def test_unknown_values_are_refused_with_what_is_expected(field, value, said):
    with pytest.raises(mb.MetadataBranchError, match=said):
        mb.encode(**{field: value})


def test_without_metadata_the_probabilities_are_the_image_only_ones_bit_for_bit():
    rng = np.random.default_rng(0)
    probs, weights = _probs(rng, 20), rng.normal(0, 2, (D, K))
    encoded = np.zeros((20, D))
    encoded[::2] = mb.encode(age=40, site="back")
    out = mb.combine(probs, encoded, weights)
    assert np.array_equal(out[1::2], probs[1::2])
    assert not np.allclose(out[::2], probs[::2])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_a_field_moves_the_log_odds_by_its_weights():
    probs = np.full((1, K), 1 / K)
    weights = np.zeros((D, K))
    weights[mb.feature_names().index("site face"), CLASSES.index("bkl")] = np.log(4.0)
    branch = mb.MetadataBranch(weights, tuple(CLASSES), {})
    moved = branch.apply(probs[0], site="face")
    assert moved[CLASSES.index("bkl")] / moved[CLASSES.index("nv")] == pytest.approx(4.0)
    assert np.array_equal(branch.apply(probs[0], sex="male"), probs[0])  # a field with zero weights


def test_the_file_round_trips_and_refuses_what_does_not_match(tmp_path):
    assert mb.read(tmp_path, CLASSES) is None
    weights = np.random.default_rng(1).normal(size=(D, K))
    mb.write(tmp_path, mb.MetadataBranch(weights, tuple(CLASSES), {"l2": 0.01}))
    back = mb.read(tmp_path, CLASSES)
    np.testing.assert_allclose(back.weights, weights, rtol=1e-6)
    assert back.meta["l2"] == 0.01 and back.contributions().shape == (D, K)
    with np.load(mb.path_in(tmp_path), allow_pickle=False) as npz:  # readable without pickle
        assert json.loads(str(npz["meta"]))["format"] == mb.FORMAT
    with pytest.raises(mb.MetadataBranchError, match="do not match"):
        mb.read(tmp_path, tuple(reversed(CLASSES)))
    mb.path_in(tmp_path).write_bytes(b"not an npz")
    with pytest.raises(mb.MetadataBranchError, match="unreadable"):
        mb.read(tmp_path, CLASSES)


def test_encode_table_keeps_only_the_fields_asked_for():
    table = pd.DataFrame({"age": [40.0, np.nan], "sex": ["male", "unknown"], "localization": ["face", "back"]})
    full, site_only = mb.encode_table(table), mb.encode_table(table, keep=("site",))
    assert full[0].sum() == 3 and full[1].sum() == 1
    assert site_only.sum() == 2 and not site_only[:, :mb.FIELD_COLUMNS["site"].start].any()


def test_dropping_zeroes_whole_fields_at_about_the_asked_rate():
    encoded = np.tile(mb.encode(age=50, sex="male", site="back"), (4000, 1))
    dropped = metadata_fit.drop_fields(encoded, p=0.3, rng=np.random.default_rng(0))
    assert (dropped <= encoded).all()
    for columns in mb.FIELD_COLUMNS.values():
        kept = dropped[:, columns].sum(axis=1)
        assert set(np.unique(kept)) == {0.0, 1.0}
        assert 0.27 < 1 - kept.mean() < 0.33


def _planted(rng, n):
    """Images the image model cannot tell apart, whose site says the class: face -> bkl, back -> nv."""
    sites = rng.choice(["face", "back", "unknown"], size=n)
    y = np.where(sites == "face", CLASSES.index("bkl"), CLASSES.index("nv"))
    flip = rng.random(n) < 0.1
    y[flip] = CLASSES.index("mel")
    table = pd.DataFrame({"age": rng.choice([30.0, 60.0], n), "sex": rng.choice(["male", "female"], n),
                          "localization": sites})
    probs = np.tile(np.full(K, 1 / K), (n, 4, 1))
    return table, probs, y


def test_the_fit_finds_a_planted_site_effect_and_helps_only_where_it_is_given():
    rng = np.random.default_rng(0)
    table, probs, y = _planted(rng, 600)
    weights, facts = metadata_fit.fit(probs, mb.encode_table(table), y, groups=np.arange(len(y)))
    assert facts["l2"] in metadata_fit.L2_GRID and facts["fitted_on"]["n_images"] == 600
    contributions = mb.MetadataBranch(weights, tuple(CLASSES), {}).contributions()
    assert contributions.loc["site face", "bkl"] > contributions.loc["site face", "nv"] + 1
    assert contributions.loc["site back", "nv"] > contributions.loc["site back", "bkl"] + 1
    held_table, held_probs, held_y = _planted(np.random.default_rng(1), 300)
    found = metadata_fit.ablation(held_y, held_probs[:, 0], held_table, weights=weights, classes=CLASSES).set_index("variant")
    assert found.loc["image + site", "log_loss"] < found.loc["image only", "log_loss"] - 0.3
    assert found.loc["image + age, sex, site", "balanced_accuracy"] > found.loc["image only", "balanced_accuracy"]
    # Sex carries nothing here: male and female move the classes alike (both learn the class prior).
    sexes = contributions.loc[["sex male", "sex female"]].to_numpy()
    assert np.abs(sexes[0] - sexes[1]).max() < 0.5


def test_the_command_refuses_a_folder_without_its_split(tmp_path, capsys):
    from core.cli import main
    from tiny_models import build_tiny_model, save_model_folder

    folder = save_model_folder(build_tiny_model(), tmp_path / "model", temperature=1.0)
    assert main(["metadata-branch", "--model", str(folder)]) == 2
    assert "splits.csv" in capsys.readouterr().err
    assert not mb.path_in(folder).exists()


def test_the_command_fits_on_train_scores_validation_and_writes_the_branch(tmp_path, tiny_dataset, monkeypatch,
                                                                          capsys):
    from core.cli import main
    from core.serving import modelio
    from tiny_models import build_tiny_model, folder_trained_on

    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    folder = folder_trained_on(tmp_path / "model", tiny_dataset, build_tiny_model())
    meta = modelio.read_metadata(folder)
    modelio.write_metadata(folder, {**meta, "temperature": 1.0})
    assert main(["metadata-branch", "--model", str(folder), "--data-dir", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "image + age, sex, site" in out and "validation, single view" in out
    assert not mb.path_in(folder).exists()  # only --write writes
    assert main(["metadata-branch", "--model", str(folder), "--data-dir", str(tiny_dataset), "--write"]) == 0
    branch = mb.read(folder, CLASSES)
    assert branch.meta["fitted_on"]["split"] == "train"
    assert [row["variant"] for row in branch.meta["validation"]][0] == "image only"


def test_the_predictor_applies_the_branch_only_to_the_fields_given(tmp_path):
    from core.serving.predict import Predictor
    from tiny_models import build_tiny_model, save_model_folder

    folder = save_model_folder(build_tiny_model(), tmp_path / "model", temperature=1.3)
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    plain = Predictor(folder).predict(rgb, metadata={"age": 70, "site": "face"})  # no branch: metadata ignored
    assert plain.metadata == {} and plain.image_only is None
    weights = np.zeros((D, K))
    weights[mb.feature_names().index("site face"), CLASSES.index("bkl")] = 2.0
    mb.write(folder, mb.MetadataBranch(weights, tuple(CLASSES), {}))
    predictor = Predictor(folder)
    alone = predictor.predict(rgb)
    assert np.array_equal(predictor.predict(rgb, metadata={"age": None, "sex": "", "site": "unknown"}).probabilities,
                          alone.probabilities)
    moved = predictor.predict(rgb, metadata={"site": "face", "sex": None})
    assert moved.metadata == {"site": "face"}
    np.testing.assert_array_equal(moved.image_only, alone.probabilities)
    ratio = lambda p: p[CLASSES.index("bkl")] / p[CLASSES.index("nv")]  # noqa: E731
    assert ratio(moved.probabilities) == pytest.approx(ratio(alone.probabilities) * np.exp(2.0))
    np.testing.assert_array_equal(moved.raw, alone.raw)  # the image model's own output is untouched
    with pytest.raises(mb.MetadataBranchError, match="body site"):
        predictor.predict(rgb, metadata={"site": "elbow"})
