"""``lesionlab <command>`` (``python -m core <command>``): one entry reaching every command of the project."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny_models import build_tiny_model, save_model_folder
from tiny_segmenter import save_tiny_segmenter

from core import cli
from core.contracts.cli_args import COMMANDS

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def module_entries() -> set:
    """Every module of core/ that runs as ``python -m <module>`` (it has a ``__main__`` guard)."""
    found = set()
    for path in (PROJECT / "core").rglob("*.py"):
        if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.MULTILINE):
            found.add(".".join(path.relative_to(PROJECT).with_suffix("").parts))
    return found - {"core.__main__"}


def test_every_module_entry_of_core_is_a_command():
    assert module_entries() == {command.module for command in COMMANDS.values()}
    assert {"train", "predict", "evaluate", "explain", "segment", "export", "ood", "data"} <= set(COMMANDS)


def test_help_lists_every_command_with_one_line_each():
    proc = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: lesionlab <command>")
    listed = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert list(listed) == list(COMMANDS)
    assert all(COMMANDS[name].summary in line for name, line in listed.items())


def test_help_imports_no_tensorflow():
    code = ("import sys; from core import cli; cli.main(['--help']); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'numpy', 'pandas') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "[]"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_its_own_help_named_lesionlab_command(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lesionlab {name} ")


@pytest.mark.parametrize("argv", [["bogus"], ["--model"], []])
def test_an_unknown_or_missing_command_is_one_line_and_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    if argv:
        assert err.count("\n") == 1 and err.startswith(f"lesionlab: error: unknown command {argv[0]!r}"), err
        assert "predict" in err
    else:
        assert err.startswith("usage: lesionlab <command>")


def test_an_unknown_command_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core", "trian", "--run-dir", str(tmp_path)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr.count("\n")) == (2, "", 1), proc.stderr


def test_a_folder_that_is_not_a_model_is_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for argv, expected in ((["predict", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "p.csv")],
                            "error: --model nope: no such folder"),
                           (["segment", "--model", str(tmp_path / "in"), "--out", str(tmp_path / "o")],
                            "error: --model in: not a model folder (it needs model.keras and model.json)")):
        assert cli.main([*argv, str(tmp_path / "in")]) == 2
        assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- outputs named by distinct_ids

SIZES = {"a": (60, 45), "b": (33, 50)}  # width, height: each output shows which input it came from


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli_models")
    return {"model": save_model_folder(build_tiny_model(), root / "classifier"),
            "segmenter": save_tiny_segmenter(root / "segmenter")}


def same_stem_images(root: Path) -> Path:
    """``a/x.jpg`` and ``b/x.jpg``, two different pictures under the same name."""
    for k, (folder, size) in enumerate(SIZES.items()):
        (root / folder).mkdir(parents=True)
        pixels = np.random.default_rng(k).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder / "x.jpg", format="JPEG")
    return root


# Evaluate is not here: its rows are the truth CSV's image ids, not names made from the files it is given.
PER_IMAGE = {  # command: (model kind, --out, the table it writes, the per-image file suffix or None)
    "predict": ("model", "p.csv", "p.csv", None),
    "explain": ("model", "out", "out/explain.csv", ".npy"),
    "segment": ("segmenter", "out", "out/measurements.csv", ".png"),
}


@pytest.mark.parametrize("command", sorted(PER_IMAGE))
def test_two_inputs_sharing_a_stem_give_two_outputs(command, models, tmp_path):
    kind, out, table, suffix = PER_IMAGE[command]
    images = same_stem_images(tmp_path / "in")
    argv = [command, "--model", str(models[kind]), "--out", str(tmp_path / out), str(images / "a"), str(images / "b")]
    assert cli.main(argv) == 0
    assert list(pd.read_csv(tmp_path / table)["image_id"]) == ["a/x", "b/x"]
    if suffix is None:
        return
    for folder, (width, height) in SIZES.items():
        written = tmp_path / out / folder / f"x{suffix}"
        shape = np.load(written).shape if suffix == ".npy" else Image.open(written).size[::-1]
        assert shape[:2] == (height, width), written
