"""The warm start fills the Predict page's caches: its first prediction loads and traces nothing."""

from pathlib import Path

import pytest

from core.contracts import paths
from core.serving import predict as core_predict
from core.explaining import saliency
from core.serving import segment as core_segment
PROJECT = Path(__file__).resolve().parent.parent


def _counting(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` (a class) by a subclass that records each construction."""
    made = []
    original = getattr(module, name)

    class Counted(original):
        def __init__(self, *args, **kwargs):
            made.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(module, name, Counted)
    return made


@pytest.mark.timeout(300)
def test_warm_caches_loads_what_the_first_prediction_needs_once(monkeypatch, clear_streamlit_caches):
    monkeypatch.setenv("HAM_SEGMENTER", str(PROJECT / "models" / "segmenter"))
    from ui import loaders, saliency_view, segment_view, warm

    predictors = _counting(monkeypatch, loaders, "Predictor")  # the cached loader builds the page's Predictor
    explainers = _counting(monkeypatch, saliency, "Explainer")
    segmenters = _counting(monkeypatch, core_segment, "Segmenter")
    model_dir = paths.default_model_dir()

    warm.warm_caches(model_dir)
    assert (len(predictors), len(explainers), len(segmenters)) == (1, 1, 1)

    # what the page calls for its first prediction comes from the caches the warm start filled
    predictor = loaders.load_predictor(model_dir)
    saliency_view.warm(model_dir, loaders.model_mtime(model_dir))
    segment_view.load_segmenter()
    assert (len(predictors), len(explainers), len(segmenters)) == (1, 1, 1)
    assert isinstance(predictor, core_predict.Predictor)


def test_a_failing_warm_start_is_logged_not_raised(monkeypatch, caplog):
    from ui import warm

    def broken(model_dir):
        raise RuntimeError("no model here")

    monkeypatch.setattr(warm, "warm_caches", broken)
    monkeypatch.setattr(warm.log, "propagate", True)  # Streamlit's loggers keep their lines to themselves
    warm._warm_logged()
    assert "warm start: the default model could not be loaded" in caplog.text


def test_a_page_run_leaves_keras_and_its_kernel_cache_alone(monkeypatch):
    """Streamlit's end-of-run clean-up would call ``keras.backend.clear_session()`` after every run,
    emptying TensorFlow's kernel cache: each traced model call of the next run then rebuilt its kernels."""
    import keras
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    resets = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: resets.append(args))
    monkeypatch.setattr(script_runner, "_clean_problem_modules", script_runner._clean_problem_modules)
    at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=60).run()
    at.run()
    assert not at.exception, at.exception
    assert resets == []


def test_the_launcher_loads_the_models_before_the_server_starts(monkeypatch):
    from streamlit.web import cli

    from ui import serve, warm

    calls = []
    monkeypatch.setattr(warm, "_preloaded", False)
    monkeypatch.setattr(warm, "warm_caches", lambda model_dir, dataset: calls.append(("warm", model_dir, dataset)))
    monkeypatch.setattr(warm, "_warm_thread", lambda: calls.append("thread"))
    monkeypatch.setattr(cli, "main", lambda args, prog_name: calls.append((prog_name, args)))
    serve.main(["--server.port", "8765"])
    assert calls == [("warm", warm.default_model_dir(), False),
                     ("streamlit", ["run", str(PROJECT / "app.py"), "--server.port", "8765"])]
    monkeypatch.setattr(warm, "_real_server", lambda: True)
    warm.warm_start()  # a page's call: the caches are full, no thread
    assert "thread" not in calls


def test_no_default_model_no_warm_start(monkeypatch, tmp_path):
    from ui import warm

    calls = []
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "nothing here"))
    monkeypatch.setattr(warm, "_warm_thread", lambda: calls.append("warm start"))
    warm.warm_start_now()
    assert calls == []


def test_the_warm_thread_alone_is_spared_the_missing_context_warning():
    import logging
    import threading

    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    from ui import warm

    warm.quiet_context_warnings()
    warm.quiet_context_warnings()  # idempotent: one filter
    logger = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    assert sum(isinstance(f, warm._OutsideSessionsOnPurpose) for f in logger.filters) == 1
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.threadName)

    handler = Keep()
    logger.addHandler(handler)
    try:
        for name in (warm.THREAD_NAME, "some-other-thread"):
            thread = threading.Thread(target=get_script_run_ctx, name=name)
            thread.start()
            thread.join()
    finally:
        logger.removeHandler(handler)
    assert seen == ["some-other-thread"]
