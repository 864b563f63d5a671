"""fundguard's anomaly-detector wrapper on the ADBench classical data sets, beside PyOD.

For each data set in ``../shared/benchmarks/adbench/`` (at most ``--max-rows`` rows) and each
detector, on the protocol of ``reference_pyod_defaults.json`` (70/30 stratified split, fit on
the training part without labels, mean over seeds 0, 1, 2), it prints the ROC-AUC and
average precision of :class:`models.anomaly.AnomalyDetector` (PyOD defaults, robust
scaling, scores in [0, 1]) beside the reference (raw PyOD defaults on min-max scaled
features), and checks the wrapper's [0, 1] scores rank the test rows exactly as the
detector's raw scores do (column ``tie``: ROC-AUC of the raw scores minus that of ours).

    .venv/bin/python benchmarks/adbench.py [--max-rows 12000] [--max-features 500]
        [--detectors IForest,ECOD] [--sets cardio,thyroid] [--scale robust] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from models.anomaly import AnomalyDetector

DATA = Path(__file__).resolve().parents[2] / "shared/benchmarks/adbench"
DETECTORS = ("IForest", "ECOD", "COPOD", "HBOS", "PCA")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Result:
    """One detector on one data set: means over the seeds."""

    dataset: str
    detector: str
    n_rows: int
    auroc: float
    ap: float
    raw_auroc: float  # the detector's own scores of the same fitted model
    seconds: float


def load_set(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``X`` and ``y`` (1 = anomaly) of one ADBench ``.npz`` file."""
    with np.load(data / f"{name}.npz", allow_pickle=False) as npz:
        return np.asarray(npz["X"], dtype=np.float64), np.asarray(npz["y"]).astype(int).ravel()


def manifest(data: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Data set name -> number of rows, and -> number of features, from ``manifest.tsv``."""
    rows, features = {}, {}
    for line in (data / "manifest.tsv").read_text().splitlines()[1:]:
        file, n_rows, n_features, *_ = line.split("\t")
        rows[file.removesuffix(".npz")] = int(n_rows)
        features[file.removesuffix(".npz")] = int(n_features)
    return rows, features


def evaluate(
    X: np.ndarray,
    y: np.ndarray,
    detector: str,
    seeds: tuple[int, ...] = SEEDS,
    scale: str = "robust",
) -> tuple[float, float, float]:
    """Mean test ROC-AUC and AP of the wrapper, and mean ROC-AUC of its raw scores."""
    auroc, ap, raw_auroc = [], [], []
    for seed in seeds:
        X_tr, X_te, _, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
        model = AnomalyDetector(detector, random_state=seed, scale=scale).fit(X_tr)
        raw = model.raw_scores(X_te)
        scores = model.score_samples(X_te)
        auroc.append(roc_auc_score(y_te, scores))
        ap.append(average_precision_score(y_te, scores))
        raw_auroc.append(roc_auc_score(y_te, raw))
    return statistics.fmean(auroc), statistics.fmean(ap), statistics.fmean(raw_auroc)


def run(
    data: Path,
    detectors: tuple[str, ...],
    sets: tuple[str, ...] | None,
    *,
    max_rows: int,
    max_features: int,
    scale: str,
) -> list[Result]:
    """Every selected data set (at most ``max_rows`` rows and ``max_features`` features)
    with every detector."""
    sizes, widths = manifest(data)
    names = sorted(sizes, key=lambda n: int(n.split("_")[0]))
    if sets:
        names = [n for n in names if n in sets or n.split("_", 1)[1] in sets]
    results = []
    for name in names:
        if sizes[name] > max_rows:
            print(f"skip {name}: {sizes[name]:,} rows > --max-rows {max_rows:,}", file=sys.stderr)
            continue
        if widths[name] > max_features:
            print(f"skip {name}: {widths[name]:,} features > --max-features", file=sys.stderr)
            continue
        X, y = load_set(data, name)
        for det in detectors:
            t0 = time.perf_counter()
            try:
                auroc, ap, raw_auroc = evaluate(X, y, det, scale=scale)
            except ValueError as error:  # e.g. PCA on a rank-deficient training part
                print(f"fail {name} {det}: {error}", file=sys.stderr)
                auroc = ap = raw_auroc = float("nan")
            results.append(
                Result(name, det, len(y), auroc, ap, raw_auroc, time.perf_counter() - t0)
            )
    return results


def report(results: list[Result], reference: dict[str, dict[str, list[float]]]) -> None:
    """One line per data set and detector, then the means per detector."""
    print(
        f"{'data set':<22}{'rows':>8} {'detector':<8}{'AUROC':>7}{'ref':>7}{'diff':>7}"
        f"{'AP':>7}{'ref':>7}{'tie':>9}{'s':>7}"
    )
    for r in results:
        ref = reference.get(r.dataset, {}).get(r.detector, [float("nan")] * 2)
        print(
            f"{r.dataset:<22}{r.n_rows:>8} {r.detector:<8}{r.auroc:>7.3f}{ref[0]:>7.3f}"
            f"{r.auroc - ref[0]:>+7.3f}{r.ap:>7.3f}{ref[1]:>7.3f}"
            f"{r.raw_auroc - r.auroc:>+9.1e}{r.seconds:>7.1f}"
        )
    print()
    print(f"{'detector':<8}{'sets':>5}{'AUROC':>8}{'ref':>7}{'AP':>7}{'ref':>7}{'max|tie|':>10}")
    for det in dict.fromkeys(r.detector for r in results):
        rows = [
            r
            for r in results
            if r.detector == det and det in reference.get(r.dataset, {}) and r.auroc == r.auroc
        ]
        failed = sum(1 for r in results if r.detector == det and r.auroc != r.auroc)
        if not rows:
            continue
        print(
            f"{det:<8}{len(rows):>5}{statistics.fmean(r.auroc for r in rows):>8.3f}"
            f"{statistics.fmean(reference[r.dataset][det][0] for r in rows):>7.3f}"
            f"{statistics.fmean(r.ap for r in rows):>7.3f}"
            f"{statistics.fmean(reference[r.dataset][det][1] for r in rows):>7.3f}"
            f"{max(abs(r.raw_auroc - r.auroc) for r in rows):>10.1e}"
            + (f"  ({failed} failed, left out)" if failed else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of ADBench .npz files")
    parser.add_argument(
        "--max-rows", type=int, default=12_000, help="skip data sets with more rows than this"
    )
    parser.add_argument(
        "--max-features",
        type=int,
        default=500,
        help="skip wider data sets (InternetAds: 1555 features, minutes per detector)",
    )
    parser.add_argument(
        "--scale", default="robust", choices=("robust", "minmax", "none"), help="the wrapper's"
    )
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated")
    parser.add_argument("--sets", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    reference = json.loads((args.data / "reference_pyod_defaults.json").read_text())
    sets = tuple(s for s in args.sets.split(",") if s) or None
    results = run(
        args.data,
        tuple(args.detectors.split(",")),
        sets,
        max_rows=args.max_rows,
        max_features=args.max_features,
        scale=args.scale,
    )
    report(results, reference)


if __name__ == "__main__":
    main()
