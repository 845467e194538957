"""The option schema of both tasks: the form, the command line and the validator accept and refuse the same
option sets, and the defaults of each task launch its smallest run."""

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import open_page, write_tiny_dataset

from core.training import models, runs
from core.training import options as opts
PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "train.py")
SCRATCH = {"arch": "small_cnn", "weights": "none", "warmup_epochs": 0}

GOOD = [
    {},
    SCRATCH,
    {**SCRATCH, "image_size": 32, "image_height": 32, "epochs": 1, "batch_size": 1},
    {"arch": "mobilenet_v2", "weights": "offline-imagenet", "image_size": 192, "image_height": 144},
    {"arch": "efficientnet_b0", "weights": "imagenet", "label_smoothing": 0.5, "dropout": 0.9},
    {"arch": "mobilenet_v3_small", "weights": "none", "lr": 0.999, "finetune_lr": 1e-7},
    {"epochs": 3, "warmup_epochs": 3, "imbalance": "focal", "augment": "strong"},
    {"val_fraction": 0.4, "test_fraction": 0.4, "max_images": 50, "seed": 0},
    {"epochs": 1},  # the default warm-up (2) shortens to the run
    {"task": "segmentation"},
    {"task": "segmentation", "epochs": 1, "max_images": 200},
    {"task": "segmentation", "image_size": 128, "image_height": 0, "freeze": "none", "weights": "none"},
]
BAD = [
    {"dropout": 1.5},
    {"val_fraction": 0.5, "test_fraction": 0.45},
    {"arch": "small_cnn"},
    {"arch": "small_cnn", "weights": "imagenet", "warmup_epochs": 0},
    {"arch": "efficientnet_b0", "weights": "offline-imagenet"},
    {"epochs": 2, "warmup_epochs": 3},
    {"image_height": 16},
    {"image_size": 16},
    {"image_size": 1024},
    {"label_smoothing": 0.6},
    {"lr": 0.0},
    {"lr": 1.0},
    {"finetune_lr": 2.0},
    {"max_images": 10},
    {"batch_size": 0},
    {"epochs": 0},
    {"task": "detection"},
    {"augment": "heavy"},
    {"task": "segmentation", "image_size": 100},
    {"task": "segmentation", "image_height": 100},
    {"task": "segmentation", "weights": "imagenet"},
    {"task": "segmentation", "unfreeze": 10},
    {"freeze": "block_3"},
]
NOT_IN_FORM = [
    {"epochs": 2.5},
    {"colour": "red"},
    {"split_file": "/no/such/split.csv"},
    {"logical_cpus": 65},
]


def cli_accepts(tmp_path, options: dict, capsys) -> bool:
    """True when ``python -m core.training.train`` accepts the options (parsed in process, nothing trains)."""
    from core.training import train
    try:
        train.parse_args(["--run-dir", str(tmp_path / "run"), *opts.to_argv(options)])
    except SystemExit as stop:
        assert stop.code == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and message.startswith("lesionlab train: error: "), message
        return False
    return True


@pytest.mark.parametrize("options", GOOD + BAD + NOT_IN_FORM, ids=repr)
def test_validator_and_command_line_agree(options, tmp_path, capsys):
    expected = options in GOOD
    assert (runs.validate_options(options) == []) is expected, runs.validate_options(options)
    assert cli_accepts(tmp_path, options, capsys) is expected
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_messages_use_the_form_labels_and_the_command_line_its_flags():
    assert opts.validate({"epochs": 2, "warmup_epochs": 3}) == ["Warm-up epochs cannot exceed Epochs"]
    assert opts.validate({"epochs": 2, "warmup_epochs": 3}, cli=True) == ["--warmup-epochs cannot exceed --epochs"]
    assert opts.validate({"task": "segmentation", "image_height": 100}) == [
        "Input height (px, 0 = square) must be 0 or a multiple of 32, got 100"]
    assert opts.validate({"task": "segmentation", "arch": "small_cnn"}) == [
        "Architecture is not an option of segmentation"]


def test_each_task_has_its_own_defaults_and_a_short_run_shortens_the_warm_up():
    seg = opts.defaults("segmentation")
    assert (seg["image_size"], seg["image_height"], seg["epochs"], seg["batch_size"], seg["freeze"]) == (
        128, 96, 8, 16, "block_3")
    assert "arch" not in seg and "warmup_epochs" not in seg and "freeze" not in opts.defaults()
    assert opts.complete({"epochs": 1})["warmup_epochs"] == 1
    assert opts.complete({"epochs": 1, "warmup_epochs": 0})["warmup_epochs"] == 0
    assert opts.complete({})["warmup_epochs"] == 2


@pytest.fixture
def form_env(tmp_path, monkeypatch):
    """An empty registry and a tiny dataset; launching records the options instead of training."""
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(write_tiny_dataset(tmp_path / "ham10000")))
    launched = []

    def fake_launch(options, command=None):
        launched.append(options)
        return tmp_path / "runs" / "launched"

    monkeypatch.setattr(runs, "launch", fake_launch)
    return launched


def form_accepts(options: dict, launched: list) -> bool:
    """Fill every field of the Train page's form (architecture first, then the rest of the
    complete option set, so its per-architecture defaults do not interfere) and press Launch.

    Accepted means launched with exactly these values: a value outside a field's bounds
    is not taken by the field, which refuses it as surely as an error message.
    """
    task = options.get("task", "classification")
    full = {o.name: options.get(o.name, o.default) for o in opts.schema(task) if o.in_form}
    if set(options) - set(full):
        return False  # the task's form has no such field
    at = open_page(PAGE, timeout=60)
    at.run()
    at.selectbox(key="train_opt_task").set_value(task).run()
    if "arch" in full:
        at.selectbox(key=f"train_opt_{task}_arch").set_value(full["arch"]).run()
    for name, value in full.items():
        if name not in ("task", "arch"):
            widget = (at.selectbox if opts.BY_NAME[name].choices else at.number_input)(key=f"train_opt_{task}_{name}")
            if opts.BY_NAME[name].choices and value not in widget.options:
                return False  # a choice the field does not offer
            widget.set_value(value)
    at.button(key="train_launch").click().run()
    assert not at.exception, at.exception
    refused = any("Cannot launch" in e.value for e in at.error)
    return not refused and bool(launched) and launched[-1] == full


@pytest.mark.parametrize("options", GOOD[:5] + GOOD[-3:] + BAD[:8] + BAD[-5:-1], ids=repr)
def test_the_form_accepts_exactly_what_the_validator_accepts(options, form_env):
    assert form_accepts(options, form_env) is (runs.validate_options(options) == [])


def test_every_option_is_in_the_cli_and_every_form_field_in_the_schema():
    from core.training import train
    for task in opts.TASKS:
        args = vars(train.parse_args(["--run-dir", "x", "--task", task]))
        assert set(args) - {"run_dir", "resume"} == set(opts.defaults(task))
        assert {k: v for k, v in args.items() if k in opts.BY_NAME} == opts.complete({"task": task})
        assert opts.validate({"task": task}) == []
    assert set(opts.BY_NAME) == {o.name for task in opts.TASKS for o in opts.schema(task)}
    assert all(o.group in ("model", "schedule", "data") for o in opts.OPTIONS if o.in_form)


def test_arch_defaults_are_valid_for_every_architecture(monkeypatch):
    for arch in models.ARCHITECTURES:
        assert opts.validate({"arch": arch, **opts.arch_defaults(arch)}) == [], arch
    assert opts.arch_defaults("small_cnn")["weights"] == "none"
    assert opts.validate({"arch": "efficientnet_lite0", "weights": "imagenet"}) == [
        "efficientnet_lite0 has no keras.applications download: choose weights 'offline-imagenet'"]
    # the registry is read when asked, so an offline checkpoint given to an entry is picked up
    b0 = models.BACKBONES["efficientnet_b0"]
    monkeypatch.setitem(models.BACKBONES, "efficientnet_b0", replace(b0, offline_weights=lambda model: None))
    assert opts.arch_defaults("efficientnet_b0")["weights"] == "offline-imagenet"
    assert opts.validate({"arch": "efficientnet_b0"}) == []
    assert opts.allowed_weights("efficientnet_b0") == models.WEIGHTS
    assert "efficientnet_b0" in opts.by_name()["weights"].help


def _squeezed(text: str) -> str:
    """``text`` without whitespace: argparse wraps help lines (and breaks words at hyphens)."""
    return "".join(text.split())


def test_the_help_lists_every_registered_backbone():
    from core.training import train
    text = _squeezed(train.build_parser().format_help())
    assert "{" + ",".join(models.BACKBONES) + "}" in text
    for backbone in models.BACKBONES.values():
        assert _squeezed(f"{backbone.name}: {backbone.blurb}") in text, backbone.name


FAKE = models.Backbone("fake_net", builder=lambda inputs, weights: inputs, last_conv_layer="image",
                       preprocessing="none", blurb="a registry test double", keras_imagenet=False, multiple=64)


def test_a_registered_backbone_becomes_a_choice_with_its_own_rules(monkeypatch, tmp_path, capsys):
    from core.training import train
    monkeypatch.setitem(models.BACKBONES, FAKE.name, FAKE)
    arch = opts.by_name()["arch"]
    assert arch.choices[-1] == "fake_net" and "fake_net: a registry test double" in arch.help
    assert _squeezed("fake_net: a registry test double") in _squeezed(train.build_parser().format_help())
    good = {"arch": "fake_net", **opts.arch_defaults("fake_net"), "image_size": 128, "image_height": 64}
    assert good["weights"] == "none" and opts.validate(good) == []
    assert cli_accepts(tmp_path, good, capsys)
    assert opts.validate({**good, "image_size": 96}) == [
        "fake_net needs input sides that are multiples of 64, got 64 x 96"]
    assert opts.validate({**good, "weights": "imagenet"}) == [
        "fake_net has no pretrained weights (it trains from scratch): choose weights 'none'"]


def test_a_registered_backbone_is_offered_by_the_form(monkeypatch, form_env):
    monkeypatch.setitem(models.BACKBONES, FAKE.name, FAKE)
    at = open_page(PAGE, timeout=60)
    at.run()
    assert "fake_net" in at.selectbox(key="train_opt_classification_arch").options


def test_help_text_shows_ranges_and_choices():
    from core.training import train
    text = train.build_parser().format_help()
    assert "[0..0.9]" in text and "{classification,segmentation}" in text and "67 %" in text
