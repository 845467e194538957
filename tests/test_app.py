"""AppTest of the app (app.py): Home's links, every page inside the frame, dataset status, no TensorFlow on Home."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import open_page
from streamlit.testing.v1 import AppTest

from ui.frame import PAGES

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


def _run() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])


def test_home_links_every_page_by_its_address_and_says_not_a_device(tiny_dataset_env):
    at = _run()
    assert at.title[0].value == "HAM10000 Lesion Lab"
    links = at.main.get("page_link")
    assert [link.proto.page for link in links] == ["explore", "train", "evaluate", "predict"]  # url path names
    assert [link.proto.label for link in links] == [entry.title for entry in PAGES[1:]]
    assert "Not a medical device" in _texts(at)


def test_sidebar_names_every_page_home_first_with_its_material_icon(tiny_dataset_env):
    links = _run().sidebar.get("page_link")
    assert [link.proto.label for link in links] == ["Home", "Explore", "Train", "Evaluate", "Predict"]
    assert [link.proto.icon for link in links] == [entry.icon for entry in PAGES]
    assert all(link.proto.icon.startswith(":material/") for link in links)


@pytest.mark.parametrize("entry", PAGES[1:], ids=[entry.url_path for entry in PAGES[1:]])
def test_every_page_runs_inside_the_frame(entry, tiny_dataset_env):
    at = open_page(Path(entry.script).name, timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert entry.title in at.title[0].value
    assert [link.proto.label for link in at.sidebar.get("page_link")] == [e.title for e in PAGES]
    assert "Not a medical device" in _texts(at)
    assert f"Dataset: found at `{tiny_dataset_env}`" in _texts(at)


def test_home_without_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "missing"))
    at = _run()
    assert "Dataset: not found at" in _texts(at) and "set HAM10000_DIR" in _texts(at)


def test_a_read_only_app_does_not_show_the_dataset_path(tiny_dataset_env, monkeypatch):
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    texts = _texts(_run())
    assert "Dataset: found" in texts and str(tiny_dataset_env) not in texts


def test_home_real_dataset_status(real_dataset_dir, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(real_dataset_dir))
    assert f"Dataset: found at `{real_dataset_dir}`" in _texts(_run())


def test_home_renders_without_tensorflow_or_scikit_learn(tiny_dataset):
    # a fresh interpreter: other tests of this session may have imported TensorFlow.
    # How fast it renders is bench/bench_explore.py's job, not a test's.
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=30).run()\n"
        "assert not at.exception\n"
        "print('tensorflow' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    env = {**os.environ, "HAM10000_DIR": str(tiny_dataset)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]  # nor scikit-learn, though it shows the model's figures


def test_home_gives_the_shipped_models_test_figures_with_their_n(tiny_dataset_env, tmp_path, monkeypatch):
    from tiny_models import build_tiny_model, save_model_folder

    from core.evaluation import metrics

    from core.contracts import predictions
    from core.contracts.labels import CLASSES

    folder = save_model_folder(build_tiny_model(), tmp_path / "default")
    rng = np.random.default_rng(0)
    y = np.arange(70) % 7
    probs = rng.dirichlet(np.ones(7), size=70)
    probs[np.arange(70) % 2 == 0, y[np.arange(70) % 2 == 0]] += 2  # right on half the images
    probs /= probs.sum(axis=1, keepdims=True)
    table = predictions.make_table([f"ISIC_{i:07d}" for i in range(70)], probs, CLASSES,
                                   truth=[CLASSES[k] for k in y])
    predictions.write(folder / predictions.FILES["test"], table, predictions.RAW)
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(folder))
    balanced = metrics.balanced_accuracy(y, probs.argmax(axis=1), 7)
    text = _texts(_run())
    assert "On the held-out **test split** (70 images" in text
    assert f"is **{balanced:.3f}**" in text


def test_home_without_a_shipped_model_or_with_a_broken_one_says_nothing_of_it(tiny_dataset_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "missing"))
    assert "shipped classifier" not in _texts(_run())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    (broken / "predictions_test.csv").write_text("not,a,predictions,file\n1,2,3,4\n")
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(broken))
    assert "shipped classifier" not in _texts(_run())
