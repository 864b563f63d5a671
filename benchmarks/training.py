"""Training the settlement model, and scoring one settlement with it online.

For each scale it simulates a province (or reuses ``--data``), builds the settlement
features of the whole history, joins the verdicts and trains (LightGBM, time-ordered
validation, sigmoid calibration), timing each step. Then it scores single settlements the
way the scorer does (``SettlementModel.predict_row``: one thread, a numpy row, calibrated)
beside a bare ``Booster.predict`` on the same row, and the same through a model registered
in and loaded from a temporary MLflow store (``ScoringModel.predict_row``) with
``--registry``. Prints seconds per step and µs p50/p99 per row.

    .venv/bin/python benchmarks/training.py [--scales medium large] [--rows 20000] [--registry]
    .venv/bin/python benchmarks/training.py --data /tmp/prov7 [--evaluate-on /tmp/m11]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from features.simulate import simulate
from models.supervised import SettlementModel, labelled_history, train


def per_row(score: Callable[[np.ndarray], object], rows: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in µs of ``score`` on each row, after a warm-up."""
    for row in rows[:200]:
        score(row)
    times = []
    for row in rows:
        started = time.perf_counter_ns()
        score(row)
        times.append((time.perf_counter_ns() - started) / 1000)
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def online(model: SettlementModel, rows: np.ndarray, label: str) -> None:
    booster = model.booster

    def bare(row: np.ndarray) -> object:
        return booster.predict(row.reshape(1, -1), num_threads=1)

    def bare_raw(row: np.ndarray) -> object:
        return booster.predict(row.reshape(1, -1), raw_score=True, num_threads=1)

    print(
        f"  online scoring ({label}: {booster.num_trees()} trees, {booster.num_feature()} "
        f"features, {len(rows):,} rows)"
    )
    for name, fn in (
        ("Booster.predict, bare", bare),
        ("Booster.predict, raw_score", bare_raw),
        ("SettlementModel.predict_row", model.predict_row),
    ):
        p50, p99 = per_row(fn, rows)
        print(f"    {name:<32}p50 {p50:7.1f} µs   p99 {p99:7.1f} µs")


def evaluate_on(model: SettlementModel, data_dir: Path) -> None:
    """The trained model on another province's verdicts (never seen in training)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from models.supervised import precision_at_k

    _, data = labelled_history(data_dir, memory_limit="3GB")
    scores = model.predict(data.features)
    y = data.labels
    print(
        f"  on {data_dir} ({len(y):,} verdicts, {int(y.sum()):,} confirmed): "
        f"AUC {roc_auc_score(y, scores):.3f}, AP {average_precision_score(y, scores):.3f}, "
        f"P@20 {precision_at_k(y, scores, 20):.2f}, P@100 {precision_at_k(y, scores, 100):.2f}"
    )


def bench(data_dir: Path, rows_wanted: int, use_registry: bool, other: Path | None = None) -> None:
    started = time.perf_counter()
    features, data = labelled_history(data_dir, memory_limit="3GB")
    feature_set = data.feature_set
    t_features = time.perf_counter() - started
    t0 = time.perf_counter()
    result = train(data)
    t_train = time.perf_counter() - t0
    print(
        f"  {len(features):,} settlements, {len(data.frame):,} with a verdict "
        f"({int(data.labels.sum()):,} confirmed), {len(feature_set.columns)} features"
    )
    print(f"  features and verdicts           {t_features:8.2f} s")
    print(
        f"  train + calibrate + validate    {t_train:8.2f} s "
        f"(AUC {result.metrics['auc']:.3f}, AP {result.metrics['average_precision']:.3f})"
    )
    matrix = features[list(feature_set.columns)].to_numpy(dtype=np.float64)
    pick = np.random.default_rng(1).choice(len(matrix), size=min(rows_wanted, len(matrix)))
    rows = np.ascontiguousarray(matrix[pick])
    online(result.model, rows, "trained model")
    if other is not None:
        evaluate_on(result.model, other)
    if use_registry:
        from models import registry

        with tempfile.TemporaryDirectory(prefix="fundguard-bench-mlflow-") as tmp:
            uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            t0 = time.perf_counter()
            logged = registry.log_training_run(result, tracking_uri=uri)
            version = registry.register(logged, tracking_uri=uri)
            t_log = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = registry.load_alias(uri, registry.MODEL_NAME, registry.CHALLENGER)
            t_load = time.perf_counter() - t0
            assert loaded is not None
            print(
                f"  log + register (v{version}, new store) {t_log:6.2f} s; load_alias {t_load:.2f} s"
            )
            p50, p99 = per_row(loaded.predict_row, rows)
            print(f"    {'ScoringModel.predict_row':<32}p50 {p50:7.1f} µs   p99 {p99:7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["medium"])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--data", type=Path, help="a province folder instead of simulating")
    parser.add_argument("--rows", type=int, default=20000, help="single rows scored online")
    parser.add_argument("--registry", action="store_true", help="also through MLflow")
    parser.add_argument(
        "--evaluate-on", type=Path, help="another province: the model on its verdicts"
    )
    args = parser.parse_args()
    if args.data:
        print(f"{args.data}:")
        bench(args.data, args.rows, args.registry, args.evaluate_on)
        return
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix=f"fundguard-bench-{scale}-") as tmp:
            t0 = time.perf_counter()
            simulate(Path(tmp), seed=args.seed, scale=scale)
            print(
                f"{scale} province (seed {args.seed}), simulated in {time.perf_counter() - t0:.1f} s:"
            )
            bench(Path(tmp), args.rows, args.registry, args.evaluate_on)


if __name__ == "__main__":
    main()
