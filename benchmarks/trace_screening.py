"""Batch trace-code screening: DuckDB (fundguard's) against a plain pandas implementation.

For each size it writes a synthetic history of N settlement lines (one code a line, 2% of
the codes GS1 element strings, a few duplicates, split sales, reversals and packs sold
without a purchase), then screens it with ``serve.screening.code_flags`` and with the
pandas baseline below, each in a child process of its own (so peak memory is its own),
and prints lines/s, peak memory and, for DuckDB, the peak of what it spilled to disk (its
spill folder and the code partitions written beside it) for both. The baseline makes one
pass: unlike fundguard (a rejected settlement consumes no pack, screened in rounds), it
also flags a resale of a pack whose earlier sale was itself rejected, so it may find a few
flags more, never fewer; the run prints both differences. The baseline is skipped where it
would not fit in memory (``--pandas-max``).

    .venv/bin/python benchmarks/trace_screening.py [--sizes 1e6 1e7 1e8] [--pandas-max 2e7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 2_000_000
LINES_PER_SETTLEMENT = 3
START = pd.Timestamp("2025-01-01", tz="Asia/Shanghai").value // 1000  # µs
YEAR_US = 365 * 86_400 * 1_000_000


def gtin(body: str) -> str:
    digits = [int(c) for c in body]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return body + str((10 - total % 10) % 10)


def write_history(folder: Path, n_lines: int, seed: int = 0) -> None:
    """N lines of pharmacy sales; every code purchased before it is sold except the planted."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_products = 200
    product_codes = [f"{8100000 + i}" for i in range(n_products - 10)]
    gtins = [gtin(f"0690123456{i:03d}") for i in range(10)]
    pd.DataFrame(
        {
            "drug_code": [f"D{i}" for i in range(n_products)],
            "generic_name": [f"药品{i}" for i in range(n_products)],
            "pack_units": rng.integers(6, 60, n_products),
        }
    ).to_parquet(folder / "drugs.parquet")
    pd.DataFrame(
        {"product_code": product_codes + gtins, "drug_code": [f"D{i}" for i in range(n_products)]}
    ).to_parquet(folder / "products.parquet")
    pack_units = pd.read_parquet(folder / "drugs.parquet")["pack_units"].to_numpy()
    writers: dict[str, pq.ParquetWriter] = {}

    def write(name: str, table: pa.Table) -> None:
        if name not in writers:
            writers[name] = pq.ParquetWriter(folder / f"{name}.parquet", table.schema)
        writers[name].write_table(table)

    serial = 0
    for start in range(0, n_lines, CHUNK):
        n = min(CHUNK, n_lines - start)
        line_idx = np.arange(start, start + n)
        settlement = line_idx // LINES_PER_SETTLEMENT
        product = rng.integers(0, n_products, n)
        serials = np.arange(serial, serial + n)
        serial += n
        gs1 = product >= n_products - 10
        codes = np.where(
            gs1,
            "(01)"
            + np.array(gtins, dtype=object)[np.clip(product - (n_products - 10), 0, 9)]
            + "(21)SN"
            + serials.astype(str),
            np.array(product_codes + [""] * 10, dtype=object)[product]
            + np.char.zfill(serials.astype(str), 9).astype(object)
            + "0000",
        )
        # plant: 0.05% re-sell an earlier code of this chunk, 0.05% sell an unpurchased one
        dup = rng.random(n) < 0.0005
        dup[:10] = False
        codes[dup] = codes[np.maximum(np.flatnonzero(dup) - 7, 0)]
        product[dup] = product[np.maximum(np.flatnonzero(dup) - 7, 0)]
        unpurchased = rng.random(n) < 0.0005
        split = rng.random(n) < 0.05
        institution = (settlement % 500).astype(str)
        institution = np.char.add("P", institution)
        settled_us = START + (line_idx.astype(np.int64) * (YEAR_US // max(n_lines, 1)))
        quantity = np.where(split, np.maximum(pack_units[product] // 3, 1), pack_units[product])
        items = pa.table(
            {
                "settlement_id": pa.array(np.char.add("S", settlement.astype(str))),
                "line_no": pa.array(line_idx % LINES_PER_SETTLEMENT + 1),
                "item_type": pa.array(np.full(n, "drug")),
                "item_code": pa.array(np.char.add("D", product.astype(str))),
                "quantity": pa.array(quantity),
                "unit_price": pa.array([Decimal("1.00")] * n, pa.decimal128(18, 2)),
                "amount": pa.array([Decimal("1.00")] * n, pa.decimal128(18, 2)),
                "trace_codes": pa.array([[c] for c in codes], pa.list_(pa.string())),
                "split_sale": pa.array(split),
            }
        )
        write("settlement_items", items)
        first = line_idx % LINES_PER_SETTLEMENT == 0
        write(
            "settlements",
            pa.table(
                {
                    "settlement_id": pa.array(np.char.add("S", settlement[first].astype(str))),
                    "institution_id": pa.array(institution[first]),
                    "settled_at": pa.array(
                        settled_us[first], pa.timestamp("us", tz="Asia/Shanghai")
                    ),
                }
            ),
        )
        bought = ~unpurchased & ~dup
        write(
            "trace_events",
            pa.table(
                {
                    "trace_code": pa.array(codes[bought].astype(str)),
                    "event_type": pa.array(np.full(int(bought.sum()), "purchase")),
                    "institution_id": pa.array(institution[bought]),
                    "event_at": pa.array(
                        settled_us[bought] - 86_400_000_000, pa.timestamp("us", tz="Asia/Shanghai")
                    ),
                }
            ),
        )
        reversed_ = first & (rng.random(n) < 0.002)
        write(
            "reversals",
            pa.table(
                {
                    "settlement_id": pa.array(np.char.add("S", settlement[reversed_].astype(str))),
                    "reversed_at": pa.array(
                        settled_us[reversed_] + 3_600_000_000,
                        pa.timestamp("us", tz="Asia/Shanghai"),
                    ),
                }
            ),
        )
    for writer in writers.values():
        writer.close()


def pandas_flags(folder: Path) -> set[tuple[str, str]]:
    """The five checks in plain pandas, one pass (no rounds), everything in memory."""
    from traceability.codes import canonicalize_codes

    items = pd.read_parquet(folder / "settlement_items.parquet")
    settlements = pd.read_parquet(folder / "settlements.parquet")
    reversals = pd.read_parquet(folder / "reversals.parquet")
    events = pd.read_parquet(folder / "trace_events.parquet")
    drugs = pd.read_parquet(folder / "drugs.parquet")
    products = pd.read_parquet(folder / "products.parquet")
    lines = items.explode("trace_codes").rename(columns={"trace_codes": "raw"})
    lines = lines.merge(settlements, on="settlement_id").merge(
        reversals, on="settlement_id", how="left"
    )
    lines = lines.merge(
        drugs[["drug_code", "pack_units"]], left_on="item_code", right_on="drug_code", how="left"
    )
    parsed = canonicalize_codes(pd.concat([lines["raw"].dropna(), events["trace_code"]]).unique())
    canon = {raw: getattr(p, "canonical", None) for raw, p in parsed.items()}
    product = {raw: getattr(p, "product_code", None) for raw, p in parsed.items()}
    lines["canonical"] = lines["raw"].map(canon)
    lines["product_code"] = lines["raw"].map(product)
    events["canonical"] = events["trace_code"].map(canon)
    flags: set[tuple[str, str]] = set()
    missing = lines["raw"].isna() | lines["canonical"].isna()
    flags |= {(s, "missing_trace_code") for s in lines.loc[missing, "settlement_id"]}
    ok = lines[~missing].copy()
    ok["units"] = np.where(ok["split_sale"], ok["quantity"], ok["pack_units"]).astype(float)
    sales = ok[
        ["canonical", "settled_at", "settlement_id", "line_no", "units", "split_sale"]
    ].assign(kind=1)
    releases = ok.loc[
        ok["reversed_at"].notna(),
        ["canonical", "reversed_at", "settlement_id", "line_no", "units", "split_sale"],
    ]
    releases = releases.rename(columns={"reversed_at": "settled_at"}).assign(
        kind=0, units=lambda d: -d["units"]
    )
    moves = pd.concat([sales, releases]).sort_values(
        ["canonical", "settled_at", "kind", "settlement_id", "line_no"]
    )
    moves["full"] = np.where(moves["split_sale"], 0.0, moves["units"])
    moves["split"] = np.where(moves["split_sale"], moves["units"], 0.0)
    grouped = moves.groupby("canonical", sort=False)
    moves["prior_full"] = grouped["full"].cumsum() - moves["full"]
    moves["prior_split"] = grouped["split"].cumsum() - moves["split"]
    m = moves[moves["kind"] == 1]
    dup = (~m["split_sale"] & (m["prior_full"] + m["prior_split"] > 0)) | (
        m["split_sale"] & (m["prior_full"] > 0)
    )
    flags |= {(s, "duplicate_trace_code") for s in m.loc[dup, "settlement_id"]}
    over = (
        m["split_sale"]
        & (m["prior_full"] == 0)
        & (
            m["prior_split"] + m["units"]
            > m.merge(
                ok[["settlement_id", "line_no", "pack_units"]],
                on=["settlement_id", "line_no"],
                how="left",
            )["pack_units"].to_numpy()
        )
    )
    flags |= {(s, "split_sale_overrun") for s in m.loc[over.to_numpy(), "settlement_id"]}
    drug_of = ok["product_code"].map(
        dict(zip(products["product_code"], products["drug_code"], strict=True))
    )
    flags |= {
        (s, "trace_code_mismatch") for s in ok.loc[drug_of != ok["item_code"], "settlement_id"]
    }
    ev = events.sort_values("event_at")
    ok = ok.sort_values("settled_at")
    joined = pd.merge_asof(
        ok,
        ev[["event_at", "institution_id", "canonical", "event_type"]],
        left_on="settled_at",
        right_on="event_at",
        by=["institution_id", "canonical"],
    )
    flags |= {
        (s, "unpurchased_trace_code")
        for s in joined.loc[joined["event_type"] != "purchase", "settlement_id"]
    }
    return flags


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


class SpillWatch:
    """The peak size of DuckDB's spill folder (``open_history``'s default) and of the folders
    beside it that share its name (the code partitions), sampled every second."""

    def __init__(self) -> None:
        self.spill = Path(tempfile.gettempdir()) / "fundguard-duckdb"
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            folders = [self.spill, *self.spill.parent.glob(f"{self.spill.name}-*")]
            self.peak = max(self.peak, sum(folder_bytes(f) for f in folders))

    def __enter__(self) -> SpillWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def child(engine: str, folder: Path) -> None:
    started = time.perf_counter()
    spill_mb = 0.0
    if engine == "duckdb":
        from serve.screening import code_flags

        with SpillWatch() as watch:
            flags = {(f.entity_id, f.pattern) for f in code_flags(folder, memory_limit="3GB")}
        spill_mb = watch.peak / 1e6
    else:
        flags = pandas_flags(folder)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak_mb,
                "spill_mb": spill_mb,
                "flags": sorted(map(list, flags)),
            }
        )
    )


def run(engine: str, folder: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", engine, str(folder)],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{engine} failed (exit {out.returncode}):\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--pandas-max", type=float, default=2e7)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    print(
        f"{'lines':>12} {'engine':<8}{'seconds':>9}{'lines/s':>12}{'peak MB':>9}"
        f"{'spill MB':>10}{'flags':>8}"
    )
    for size in args.sizes:
        n = int(size)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_history(folder, n)
            results = {"duckdb": run("duckdb", folder)}
            if n <= args.pandas_max:
                results["pandas"] = run("pandas", folder)
            for engine, r in results.items():
                print(
                    f"{n:>12,} {engine:<8}{r['seconds']:>9.1f}{n / r['seconds']:>12,.0f}"
                    f"{r['peak_mb']:>9.0f}{r['spill_mb']:>10.0f}{len(r['flags']):>8}",
                    flush=True,
                )
            if "pandas" in results:
                theirs = {tuple(f) for f in results["pandas"]["flags"]}
                ours = {tuple(f) for f in results["duckdb"]["flags"]}
                ratio = results["pandas"]["seconds"] / results["duckdb"]["seconds"]
                print(
                    f"{'':>12} duckdb is {ratio:.1f}x pandas; flags only pandas finds: "
                    f"{len(theirs - ours)} (resales of packs whose sale was rejected), "
                    f"only duckdb: {len(ours - theirs)}",
                    flush=True,
                )
            else:
                print(
                    f"{'':>12} pandas not run: it holds the whole history in memory "
                    f"(--pandas-max {args.pandas_max:.0e})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
