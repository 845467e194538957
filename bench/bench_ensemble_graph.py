"""What shipping an ensemble as one graph would cost, beside one model: latency, size, parameters.

Builds one Keras graph from teacher model folders (each member's softmax, then
``softmax(log p / T_member)`` with its own temperature, averaged: the ensemble the
soft-targets file scores, single view) and times a single-image forward pass, the
way ``core.serving.predict`` runs the shipped model (``modelio.compiled_forward``,
after warm-up), against each ``--single`` model folder in the same run. Also prints
parameters and the saved ``.keras`` size.

    .venv/bin/python bench/bench_ensemble_graph.py --member models/runs/t1 --member models/runs/t2 \\
        --member models/runs/t3 --single models/runs/s2 [--n 200]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.serving import modelio  # noqa: E402


def ensemble_graph(member_dirs: list):
    """One Keras model averaging the members' temperature-scaled probabilities (single view)."""
    import keras

    metas = [modelio.read_metadata(Path(d)) for d in member_dirs]
    sizes = {modelio.input_size(m) for m in metas}
    if len(sizes) != 1:
        raise SystemExit(f"members differ in input size: {sizes}")
    inputs = keras.Input(shape=(*sizes.pop(), 3), name="image")
    outs = []
    for i, (folder, meta) in enumerate(zip(member_dirs, metas)):
        member = modelio.load_model(Path(folder), meta)
        member.name = f"member_{i}_{Path(folder).name}"
        probs = member(inputs)
        probs = probs[0] if isinstance(probs, (list, tuple)) else probs  # a saved model may return [probs]
        t = float(meta["temperature"])
        outs.append(keras.layers.Softmax(name=f"calibrated_{i}")(keras.ops.log(keras.ops.maximum(probs, 1e-12)) / t))
    averaged = keras.layers.Average(name="ensemble")(outs) if len(outs) > 1 else outs[0]
    return keras.Model(inputs, averaged, name="ensemble")


def latency(model, n: int, seed: int = 0) -> tuple:
    """``(p50, p90)`` in ms of single-image forward passes after 20 warm-up calls."""
    forward = modelio.compiled_forward(model)
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    x = np.random.default_rng(seed).uniform(0, 255, (1, *shape)).astype(np.float32)
    for _ in range(20):
        forward(x)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        forward(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def saved_mb(model) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.stat().st_size / 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", type=Path, action="append", required=True, help="a teacher's model folder")
    parser.add_argument("--single", type=Path, action="append", default=[], help="a model folder timed alone")
    parser.add_argument("--n", type=int, default=200, help="timed forward passes per model")
    args = parser.parse_args(argv)
    models = {f"ensemble of {len(args.member)} ({', '.join(p.name for p in args.member)})": ensemble_graph(args.member)}
    models.update({p.name: modelio.load_model(p, modelio.read_metadata(p)) for p in args.single})
    print(f"single-image forward pass after warm-up, n={args.n} each, same process, one after the other:")
    for name, model in models.items():
        p50, p90 = latency(model, args.n)
        print(f"  {name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms; {model.count_params() / 1e6:.2f} M parameters; "
              f".keras {saved_mb(model):.1f} MB")


if __name__ == "__main__":
    main()
