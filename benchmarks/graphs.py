"""Graph analyses (models.graphs) on simulated provinces: time, peak memory and quality.

For each scale it simulates a province into a temporary folder (or uses ``--data``), then
runs, each in a child process of its own (so its peak memory is its own, from
``resource.getrusage``):

- ``baseline``: DuckDB just reading what the analyses read (the inpatient settlements and
  every drug line's codes, unnested) into temp tables: the floor for this data;
- ``coadmission``: ``group_admission_flags``;
- ``codeflow``: ``code_flow_flags``.

and prints seconds, peak memory, flags and the quality against the simulator's truth
(groups: recall and precision with Jaccard >= 0.5, benign families hit; hubs and hoarders:
average precision over every institution and patient, an unflagged one scoring 0).

    .venv/bin/python benchmarks/graphs.py [--scales medium large] [--seed 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

STEPS = ("baseline", "coadmission", "codeflow")
BASELINE_SQL = """
CREATE TEMP TABLE b_stays AS
    SELECT settlement_id, institution_id, patient_id, admit_date, diagnosis_code, fund_paid
    FROM settlements WHERE visit_type = 'inpatient';
CREATE TEMP TABLE b_codes AS
    SELECT i.settlement_id, s.patient_id, s.institution_id, s.settled_at, i.item_code,
           unnest(i.trace_codes) AS raw
    FROM settlement_items i JOIN settlements s USING (settlement_id)
    WHERE i.item_type = 'drug';
"""


def child(step: str, folder: Path, memory_limit: str, seed: int) -> None:
    if step.startswith("simulate-"):
        from features.simulate import simulate

        started = time.perf_counter()
        simulate(folder, seed=seed, scale=step.removeprefix("simulate-"))
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))
        return
    from features.batch import open_history

    con = open_history(folder, memory_limit=memory_limit)
    started = time.perf_counter()
    out: dict[str, object] = {}
    if step == "baseline":
        for statement in filter(str.strip, BASELINE_SQL.split(";")):
            con.execute(statement)
        out["rows"] = con.execute(
            "SELECT (SELECT count(*) FROM b_stays) + (SELECT count(*) FROM b_codes)"
        ).fetchall()[0][0]
    elif step == "coadmission":
        from models.graphs import group_admission_flags

        flags, members = group_admission_flags(con)
        groups: dict[str, list[str]] = {}
        for m in members:
            groups.setdefault(m.group_id, []).append(m.patient_id)
        out["groups"] = groups
        out["flags"] = len(flags)
    else:
        from models.graphs import code_flow_flags

        flags = code_flow_flags(con)
        out["scores"] = [[f.pattern, f.entity_id, f.score] for f in flags]
        out["flags"] = len(flags)
    out["seconds"] = time.perf_counter() - started
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(step: str, folder: Path, memory_limit: str, seed: int = 0) -> dict[str, object]:
    """Run one step in a child process of its own. The parent stays small: a forked child
    starts from its parent's peak resident memory, which would hide its own."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            step,
            str(folder),
            "--memory-limit",
            memory_limit,
            "--seed",
            str(seed),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{step} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _truth_groups(folder: Path, name: str) -> list[set[str]]:
    rows = duckdb.sql(
        f"SELECT group_id, list(patient_id) FROM '{folder / 'truth' / name}' GROUP BY 1"  # noqa: S608 - our own path
    ).fetchall()
    return [set(r[1]) for r in rows]


def quality(folder: Path, results: dict[str, dict[str, object]]) -> str:
    """One line: the analyses' figures against the simulator's truth."""
    from sklearn.metrics import average_precision_score

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b)

    truth = _truth_groups(folder, "groups.parquet")
    families = _truth_groups(folder, "benign_groups.parquet")
    found = [set(m) for m in results["coadmission"]["groups"].values()]  # type: ignore[attr-defined]
    recall = sum(any(jaccard(t, f) >= 0.5 for f in found) for t in truth) / max(len(truth), 1)
    precision = sum(any(jaccard(f, t) >= 0.5 for t in truth) for f in found) / max(len(found), 1)
    families_hit = sum(any(jaccard(b, f) >= 0.5 for f in found) for b in families)
    parts = [
        f"groups: {len(found)} flagged / {len(truth)} planted, recall {recall:.2f}, "
        f"precision {precision:.2f}, families hit {families_hit}/{len(families)}"
    ]
    scores = results["codeflow"]["scores"]
    for pattern, table, column in (
        ("drug_hoarding", "patients", "patient_id"),
        ("resale_hub", "institutions", "institution_id"),
    ):
        positives = {
            r[0]
            for r in duckdb.sql(
                f"SELECT entity_id FROM '{folder / 'truth' / 'flags.parquet'}' WHERE pattern = ?",  # noqa: S608
                params=[pattern],
            ).fetchall()
        }
        universe = [
            r[0]
            for r in duckdb.sql(f"SELECT {column} FROM '{folder / table}.parquet'").fetchall()  # noqa: S608
        ]
        by_entity = {e: s for p, e, s in scores if p == pattern}  # type: ignore[attr-defined]
        ap = average_precision_score(
            [e in positives for e in universe], [by_entity.get(e, 0.0) for e in universe]
        )
        parts.append(f"{pattern}: {len(by_entity)} flagged / {len(positives)} planted, AP {ap:.3f}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", nargs="+", default=["medium", "large"])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an existing province folder (one scale)")
    parser.add_argument("--memory-limit", default="3GB")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.memory_limit, args.seed)
        return
    print(f"{'scale':<8}{'step':<13}{'seconds':>9}{'x baseline':>11}{'peak MB':>9}{'flags':>7}")
    for scale in [args.data.name] if args.data else args.scales:
        with tempfile.TemporaryDirectory(prefix=f"graphs-{scale}-") as tmp:
            folder = args.data or Path(tmp)
            if not args.data:
                sim = run(f"simulate-{scale}", folder, args.memory_limit, args.seed)
                print(
                    f"{scale:<8}{'simulate':<13}{float(sim['seconds']):>9.1f}{'':>11}"  # type: ignore[arg-type]
                    f"{float(sim['peak_mb']):>9.0f}",  # type: ignore[arg-type]
                    flush=True,
                )
            results = {step: run(step, folder, args.memory_limit) for step in STEPS}
            base = float(results["baseline"]["seconds"])  # type: ignore[arg-type]
            for step, r in results.items():
                seconds = float(r["seconds"])  # type: ignore[arg-type]
                print(
                    f"{scale:<8}{step:<13}{seconds:>9.2f}{seconds / base:>11.1f}"
                    f"{float(r['peak_mb']):>9.0f}{r.get('flags', ''):>7}",  # type: ignore[arg-type]
                    flush=True,
                )
            print(f"{scale:<8}{quality(folder, results)}", flush=True)


if __name__ == "__main__":
    main()
