"""Latency of one prediction and of prediction + fast Grad-CAM, after warm-up.

Targets on a laptop-class CPU: predict p50 <= 50 ms, predict + Grad-CAM p50 <= 150 ms.
The tf-keras-vis Grad-CAM is timed beside the hand-written one for the ratio.

    .venv/bin/python bench/bench_predict.py [--model DIR] [--repeats 30]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from standin import model_folder  # noqa: E402


def timings(fn, repeats: int) -> np.ndarray:
    """Milliseconds of ``repeats`` calls of ``fn`` (after one untimed call)."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return np.array(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: models/default)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    folder, note = model_folder(args.model)

    from core.dataset.images import to_model_input
    from core.serving.predict import Predictor
    from core.explaining.saliency import Explainer, gradcam, gradcam_fast

    predictor = Predictor(folder)
    predictor.warmup()
    explainer = Explainer.of(predictor.folder, predictor.model)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)  # an original-size HAM10000 image

    def predict_and_cam():
        prediction = predictor.predict(rgb)
        target = predictor.classes.index(prediction.predicted)
        gradcam_fast(explainer, to_model_input(rgb, predictor.input_size), target)

    x = np.zeros((*predictor.input_size, 3), np.float32)
    rows = {
        "predict (600×450 → S)": timings(lambda: predictor.predict(rgb), args.repeats),
        "predict + fast Grad-CAM": timings(predict_and_cam, args.repeats),
        "fast Grad-CAM alone": timings(lambda: gradcam_fast(explainer, x, 0), args.repeats),
        "tf-keras-vis Gradcam": timings(lambda: gradcam(explainer, x, 0), max(5, args.repeats // 3)),
    }
    print(f"{note}; input {predictor.input_size[1]}×{predictor.input_size[0]} px; {args.repeats} repeats after warm-up")
    print(f"{'what':<26}{'p50 ms':>9}{'p90 ms':>9}")
    for name, ms in rows.items():
        print(f"{name:<26}{np.percentile(ms, 50):9.1f}{np.percentile(ms, 90):9.1f}")
    ratio = np.percentile(rows["tf-keras-vis Gradcam"], 50) / np.percentile(rows["fast Grad-CAM alone"], 50)
    print(f"tf-keras-vis Gradcam / fast Grad-CAM (p50): {ratio:.1f}×")


if __name__ == "__main__":
    main()
