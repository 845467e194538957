"""Saliency benchmark: do the maps look at the lesion, are they faithful, do they explain the model?

Over a fixed, seeded sample of HAM10000 images with lesion masks (the model's
test split, from its ``splits.csv`` or ``predictions_test.csv``, else its val
split; ``--split val`` to try a new method on validation and keep the test split
for the report), every method explains the model's predicted class. Reported per method:

* **energy in lesion** — share of the map's mass inside the lesion mask (mean, 95 % CI);
* **pointing game** — share of images whose map peaks inside the lesion;
* **deletion / insertion AUC** (``core.explaining.faithfulness``, blurred baseline, 10 steps):
  lower / higher is more faithful; on the first ``--curve-n`` images (22 forward passes each);
* **native** — the resolution the map is computed at, before upsampling;
* **p50 / p90 ms** — latency of one map after warm-up (wall clock), and the p50
  of the CPU time it used on all threads (what it costs when the machine is shared);
* **sanity** (Adebayo et al., 2018) — cascading randomisation of the weights from
  the top: Spearman rank correlation between the trained and the randomised
  model's maps, per depth (mean over ``--sanity-n`` images; low is good).

The tf-keras-vis back-end is slow (it clones the model, Score-CAM runs ten
forward passes, SmoothGrad ten backward passes): it is scored on the first
``--slow-n`` images only.

Baselines: a centred Gaussian (what "lesions sit in the middle" alone gives)
and a uniform map (ties broken at random: its energy is the lesion's area share).
The winner is the method with the highest energy in the lesion among those
that put more energy in the lesion than the centred Gaussian, whose maps
decorrelate once the last stage is randomised (Spearman ≤ 0.5), take ≤ 100 ms
p50 and are computed on at least 14 × 14 cells.

    HAM10000_DIR=... nice .venv/bin/python bench/bench_saliency.py [--model DIR] [--n 200]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from standin import model_folder  # noqa: E402

GAUSSIAN = "Centred Gaussian (baseline)"
UNIFORM = "Uniform (baseline)"
BASELINES = (GAUSSIAN, UNIFORM)
SANITY_MAX = 0.5
P50_MAX_MS = 100.0
SANITY_DEPTH = "down to stride 32"
MIN_NATIVE = 14  # a map computed on fewer cells per side cannot follow a lesion's border


def sample_images(model_dir: Path, data_dir: Path, n: int, seed: int, splits=("test", "val")) -> tuple:
    """``(rows, source)``: ``n`` seeded dataset rows that have a mask, from the first of ``splits`` the model has."""
    from core.dataset.data import load_dataset

    table = load_dataset(data_dir)
    table = table[(table["mask_path"] != "") & (table["path"] != "")]
    source = "any images"
    for split in splits:  # images the model did not train on
        held_out = table[table["image_id"].isin(held_out_ids(Path(model_dir), split))]
        if len(held_out):
            table, source = held_out, f"{split} split"
            break
    return table.sample(n=min(n, len(table)), random_state=seed), source


def held_out_ids(model_dir: Path, split: str) -> set:
    """Image ids of a held-out split, from ``splits.csv`` or the split's predictions file."""
    from core.contracts import predictions
    from core.dataset.splits import SPLIT_FILE, load_splits

    if (model_dir / SPLIT_FILE).is_file():
        splits = load_splits(model_dir / SPLIT_FILE)
        return set(splits.loc[splits["split"] == split, "image_id"])
    path = model_dir / predictions.FILES[split]
    return set(predictions.read_frame(path)[predictions.IMAGE_ID]) if path.is_file() else set()


def load_inputs(rows, predictor) -> list:
    """``[(model input, mask, predicted class)]`` for the sampled rows."""
    from core.dataset.images import decode_image, read_mask, to_model_input

    inputs = [to_model_input(decode_image(Path(r.path).read_bytes()), predictor.input_size) for r in rows.itertuples()]
    targets = np.argmax(predictor.raw_probabilities(np.stack(inputs)), axis=1)
    return [(x, read_mask(r.mask_path), int(t)) for x, r, t in zip(inputs, rows.itertuples(), targets)]


def saliency_of(explainer, method: str, x, target: int) -> np.ndarray:
    """The map of a method or a baseline."""
    from core.explaining.faithfulness import gaussian_baseline
    from core.explaining.saliency import explain

    if method == GAUSSIAN:
        return gaussian_baseline(x.shape[:2])
    if method == UNIFORM:  # constant, ties broken by one fixed random order of the pixels
        return (1.0 + 1e-6 * np.random.default_rng(0).random(x.shape[:2])).astype(np.float32)
    return explain(explainer, x, method, class_index=target)


def score_method(method, images, predictor, explainer, curves: int) -> list:
    """One record per image; latency measured after one warm-up call.

    Deletion and insertion curves (22 forward passes an image) are run on the first ``curves`` images.
    """
    from core.explaining import faithfulness as ff
    saliency_of(explainer, method, *images[0][::2])  # warm-up: tracing is not latency
    records = []
    for i, (x, mask, target) in enumerate(images):
        start, cpu = time.perf_counter(), time.process_time()
        saliency = saliency_of(explainer, method, x, target)
        ms, cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
        record = {"method": method, "ms": ms, "cpu_ms": cpu_ms, "energy": ff.energy_in_mask(saliency, mask),
                  "pointing": ff.pointing_game(saliency, mask), "deletion": np.nan, "insertion": np.nan}
        if i < curves:
            record["deletion"] = ff.deletion_curve(predictor.predict_fn, x, saliency, class_index=target, steps=10).auc
            record["insertion"] = ff.insertion_curve(predictor.predict_fn, x, saliency, class_index=target,
                                                     steps=10).auc
        records.append(record)
    return records


def cascade(model, last_conv: str, images, methods, trained_maps: dict, seed: int) -> pd.DataFrame:
    """Spearman between trained and randomised maps, per method and depth of randomisation."""
    from core.explaining.saliency import Explainer
    from core.explaining.saliency.sanity import copy_model, depths, randomise, spearman, weight_groups

    rng, clone = np.random.default_rng(seed), copy_model(model)
    explainer, groups = Explainer(clone, last_conv), weight_groups(clone)
    rows, done = [], 0
    for label, upto in depths(groups):
        for _, _, layers in groups[done:upto]:
            randomise(layers, rng)
        done = upto
        explainer.weights_changed()
        for method in methods:
            rhos = [spearman(trained, saliency_of(explainer, method, x, t))
                    for trained, (x, _, t) in zip(trained_maps[method], images)]
            rows.append({"method": method, "depth": label, "spearman": float(np.mean(rhos))})
    table = pd.DataFrame(rows).pivot(index="method", columns="depth", values="spearman")
    return table.loc[list(methods), [label for label, _ in depths(groups)]]


def summary(records: pd.DataFrame, natives: dict) -> pd.DataFrame:
    """One row per method: n, native, energy (CI), pointing, deletion, insertion, p50, p90."""
    rows = []
    for method, group in records.groupby("method", sort=False):
        energy = group["energy"]
        half = 1.96 * energy.std(ddof=1) / np.sqrt(len(energy)) if len(energy) > 1 else float("nan")
        rows.append({"method": method, "n": len(group), "n curves": int(group["deletion"].notna().sum()),
                     "native": natives[method],
                     "energy in lesion": f"{energy.mean():.3f} ± {half:.3f}",
                     "pointing": round(group["pointing"].mean(), 3), "deletion ↓": round(group["deletion"].mean(), 3),
                     "insertion ↑": round(group["insertion"].mean(), 3),
                     "p50 ms": round(group["ms"].median(), 1), "p90 ms": round(group["ms"].quantile(0.9), 1),
                     "p50 CPU ms": round(group["cpu_ms"].median(), 1),
                     "_energy": energy.mean()})
    return pd.DataFrame(rows).set_index("method")


def winner(table: pd.DataFrame, sanity: pd.DataFrame) -> str | None:
    """The method with the best energy among those beating the centred Gaussian and passing the sanity and latency bars.

    A map that a centred blob beats says nothing about this image, however fast or sane it is.
    """
    floor = table.loc[GAUSSIAN, "_energy"]  # main always scores the baselines
    ok = [m for m in table.index if m not in BASELINES and m in sanity.index and table.loc[m, "_energy"] > floor
          and sanity.loc[m, SANITY_DEPTH] <= SANITY_MAX and table.loc[m, "p50 ms"] <= P50_MAX_MS
          and min(int(side) for side in table.loc[m, "native"].split("×")) >= MIN_NATIVE]
    return max(ok, key=lambda m: table.loc[m, "_energy"]) if ok else None


def main(argv=None) -> None:
    from core.contracts.paths import dataset_dir
    from core.explaining.saliency import DEFAULT_METHOD, METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: models/default)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: HAM10000_DIR)")
    parser.add_argument("--n", type=int, default=200, help="images for localisation, faithfulness and latency")
    parser.add_argument("--curve-n", type=int, default=50, help="of which for deletion/insertion curves")
    parser.add_argument("--slow-n", type=int, default=20, help="images for the tf-keras-vis back-end (slow)")
    parser.add_argument("--sanity-n", type=int, default=12, help="images for the randomisation checks")
    parser.add_argument("--sanity-slow-n", type=int, default=4, help="of which for the tf-keras-vis back-end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="held-out split to sample (val: for trying methods; the report uses test)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="saliency methods (names as in the UI)")
    args = parser.parse_args(argv)
    folder, note = model_folder(args.model)

    from core.serving.predict import Predictor
    from core.explaining.saliency import Explainer

    predictor = Predictor(folder)
    explainer = Explainer.of(predictor.folder, predictor.model)
    splits = ("test", "val") if args.split == "test" else ("val",)
    rows, source = sample_images(folder, args.data or dataset_dir(), args.n, args.seed, splits)
    images = load_inputs(rows, predictor)
    methods = [*BASELINES, *args.methods]
    slow = {m for m in methods if m in METHODS and METHODS[m].backend == "tf-keras-vis"}
    trained = {m: [saliency_of(explainer, m, x, t) for x, _, t in images[: args.sanity_slow_n if m in slow
                                                                           else args.sanity_n]] for m in methods}
    sanity = cascade(predictor.model, predictor.meta["last_conv_layer"], images[: args.sanity_n], methods, trained,
                     args.seed)
    print(sanity.round(2).to_string(), file=sys.stderr, flush=True)
    records, natives = [], {}
    for method in methods:
        found = score_method(method, images[: args.slow_n] if method in slow else images, predictor, explainer,
                             args.curve_n)
        records += found
        natives[method] = "×".join(map(str, METHODS[method].native_size(explainer))) if method in METHODS else "—"
        print(f"  {method}: {len(found)} images, energy {np.mean([r['energy'] for r in found]):.3f}",
              file=sys.stderr, flush=True)
    table = summary(pd.DataFrame(records), natives)
    report(table, sanity, note, source, len(images), args, DEFAULT_METHOD)


def report(table, sanity, note, source, n, args, default) -> None:
    """Print both tables and the verdict."""
    pd.set_option("display.width", 250)
    print(f"{note}; {n} images with masks ({source}, seed {args.seed}); target = predicted class; "
          f"tf-keras-vis methods on the first {args.slow_n}")
    print(table.drop(columns="_energy").to_string())
    print(f"\nSanity (Adebayo et al. 2018): Spearman between trained and randomised maps, mean over "
          f"{args.sanity_n} images ({args.sanity_slow_n} for tf-keras-vis); weights re-drawn from the top, cumulatively")
    print(sanity.round(2).to_string())
    best = winner(table, sanity)
    print(f"\nWinner (best energy above the centred Gaussian's, Spearman ≤ {SANITY_MAX} at '{SANITY_DEPTH}', "
          f"p50 ≤ {P50_MAX_MS:g} ms, native ≥ {MIN_NATIVE}×{MIN_NATIVE}): {best}")
    if default in table.index:
        row = table.loc[default]
        print(f"Default '{default}': energy {row['energy in lesion']} (Gaussian baseline "
              f"{table.loc[GAUSSIAN, 'energy in lesion']}), Spearman at '{SANITY_DEPTH}' "
              f"{sanity.loc[default, SANITY_DEPTH]:.2f}, p50 {row['p50 ms']} ms")


if __name__ == "__main__":
    main()
