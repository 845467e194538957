"""The dataset's command line: download HAM10000, validate a folder, write a lesion-grouped split.

    lesionlab data download [--dest DIR]
    lesionlab data validate [DIR] [--decode]
    lesionlab data split [--data-dir DIR] [--seed N] [--out FILE]

Apart from :mod:`core.dataset.data`, so that the loader and the downloader (which
checks what it fetched with the loader) do not import each other.
"""

import argparse
import sys
from pathlib import Path

from core.contracts import cli_args
from core.dataset.data import DatasetError, data_facts, load_dataset, validate_dataset


def _text_progress(done: int, total: int, name: str) -> None:
    share = f"{100 * done / total:5.1f}%" if total else "     "
    print(f"\r{share} {done / 1e6:9.1f} MB  {name[:50]:<50}", end="", file=sys.stderr, flush=True)


def _cli_download(args) -> int:
    from core.dataset import download
    try:
        dest = download.download_ham10000(dest=args.dest, base_url=args.base_url, progress=_text_progress)
    except download.DownloadError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    print(f"\ndataset ready in {dest}")
    return 0


def _cli_validate(args) -> int:
    from core.contracts.paths import dataset_dir

    root = Path(args.dir) if args.dir else dataset_dir()
    frame = load_dataset(root)
    if args.decode:
        validate_dataset(frame, check_images=True)
    for key, value in data_facts(frame).items():
        print(f"{key}: {value}")
    print(f"OK: {root} ({'decoded every image' if args.decode else 'files listed, not decoded'})")
    return 0


def _cli_split(args) -> int:
    from core.dataset import splits
    from core.contracts.paths import PROJECT_ROOT, dataset_dir

    frame = load_dataset(Path(args.data_dir) if args.data_dir else dataset_dir())
    table = splits.make_splits(frame, seed=args.seed, val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction)
    out = Path(args.out) if args.out else PROJECT_ROOT / "data" / "splits" / f"split_seed{args.seed}.csv"
    digest = splits.save_splits(table, out)
    print(splits.split_summary(table).to_string())
    print(f"wrote {out}\nsha256 {digest}")
    return 0


def main(argv=None) -> int:
    """Entry point of ``lesionlab data``."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("data"), description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    down = commands.add_parser("download", help="fetch HAM10000 from Harvard Dataverse")
    down.add_argument("--dest", help="target folder (default: HAM10000_DIR or data/ham10000)")
    down.add_argument("--base-url", default="https://dataverse.harvard.edu")
    down.set_defaults(run=_cli_download)
    check = commands.add_parser("validate", help="load a dataset folder and print its facts")
    check.add_argument("dir", nargs="?", help="dataset folder (default: HAM10000_DIR or data/ham10000)")
    check.add_argument("--decode", action="store_true", help="decode every image (slow)")
    check.set_defaults(run=_cli_validate)
    split = commands.add_parser("split", help="write a lesion-grouped train/val/test split")
    split.add_argument("--data-dir", help="dataset folder (default: HAM10000_DIR or data/ham10000)")
    split.add_argument("--seed", type=int, default=42)
    split.add_argument("--val-fraction", type=float, default=0.15)
    split.add_argument("--test-fraction", type=float, default=0.15)
    split.add_argument("--out", help="split CSV (default: data/splits/split_seed<N>.csv)")
    split.set_defaults(run=_cli_split)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (DatasetError, OSError) as err:
        print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}", file=sys.stderr)
        return 1 if args.command == "download" else 2  # 2: the input is unusable


if __name__ == "__main__":
    sys.exit(main())
