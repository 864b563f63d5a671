"""Evaluation of a screening against a simulated province's truth.

A screening's flags (``flags.parquet`` and ``groups.parquet``, CONTRACT.md §5) are scored
per pattern the way inspectors live by them: precision and recall of the flags, average
precision of the ranking by flag score, precision in the top k flags an inspector can work
(k = the true count, 20 and 100), and how many innocent look-alikes were flagged (should be
none). For ``group_admission`` a flagged group is right when its members overlap a planted
group's by a Jaccard similarity of at least 0.5, each planted group matched at most once.

Precision@k divides by the flags actually in the top k (``min(k, flagged)``): a pattern
with 4 flags, all true, has precision@20 = 1.0, not 0.2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import average_precision_score, precision_recall_curve

GROUP_PATTERN: Final = "group_admission"
JACCARD_MATCH: Final = 0.5
TOP_K: Final = (20, 100)


@dataclass(frozen=True)
class PatternScore:
    """How well one pattern's flags find the planted cases of that pattern.

    ``None`` marks a measure that has no meaning here (recall with nothing planted,
    precision with nothing flagged)."""

    pattern: str
    entity_type: str
    planted: int
    flagged: int
    true_positives: int
    precision: float | None
    recall: float | None
    average_precision: float | None
    precision_at_k: dict[str, float | None]
    lookalikes_flagged: int
    curve: str | None = None  # file name of the PR curve, beside the table

    def as_row(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """Per-pattern scores of one screening, and where the table and the curves were
    written (``out_dir``; nothing written when it is ``None``)."""

    patterns: list[PatternScore]
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

    def pattern(self, name: str) -> PatternScore:
        for score in self.patterns:
            if score.pattern == name:
                return score
        raise KeyError(f"no pattern {name!r} in this evaluation")

    def to_markdown(self) -> str:
        head = (
            "| pattern | entity | planted | flagged | TP | precision | recall | AP "
            "| P@true | P@20 | P@100 | look-alikes flagged |"
        )
        lines = [head, "|" + "---|" * 12]
        for s in self.patterns:
            k = s.precision_at_k
            cells = [
                s.pattern,
                s.entity_type,
                str(s.planted),
                str(s.flagged),
                str(s.true_positives),
                _fmt(s.precision),
                _fmt(s.recall),
                _fmt(s.average_precision),
                _fmt(k.get("true")),
                _fmt(k.get("20")),
                _fmt(k.get("100")),
                str(s.lookalikes_flagged),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps(
            {"patterns": [s.as_row() for s in self.patterns]}, ensure_ascii=False, indent=2
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ranked(flags: pd.DataFrame) -> pd.DataFrame:
    """Flags in the order an inspector works them: score, then amount at risk, then id."""
    order = flags.assign(_amount=flags["amount_at_risk"].astype("float64"))
    return order.sort_values(
        ["score", "_amount", "entity_id"], ascending=[False, False, True], kind="stable"
    ).drop(columns="_amount")


def _precision_at(hits: np.ndarray, k: int) -> float | None:
    top = hits[:k]
    return None if len(top) == 0 else float(top.mean())


def _scores(
    pattern: str,
    entity_type: str,
    hits: np.ndarray,
    scores: np.ndarray,
    planted: int,
    lookalikes: int,
) -> tuple[PatternScore, tuple[np.ndarray, np.ndarray] | None]:
    """The measures of one pattern from its ranked flags (``hits``: 1 where a flag is
    right, in rank order; ``scores``: their scores) and the planted count. Also the PR
    curve (precision, recall against everything planted), when there is one."""
    flagged = len(hits)
    tp = int(hits.sum())
    precision = tp / flagged if flagged else None
    recall = tp / planted if planted else None
    average_precision: float | None = None
    curve = None
    if planted:
        if tp == 0:
            average_precision = 0.0
        elif tp == flagged:
            # every flag right: precision 1 at every recall the flags reach
            average_precision = tp / planted
            curve = (np.array([1.0, 1.0]), np.array([tp / planted, 0.0]))
        else:
            # AP over the flags, rescaled: recall is against everything planted, and a
            # planted case never flagged adds no area (it is never retrieved)
            ap_flagged = float(average_precision_score(hits, scores))
            average_precision = ap_flagged * tp / planted
            p, r, _ = precision_recall_curve(hits, scores)
            curve = (p, r * tp / planted)
    at_k: dict[str, float | None] = {"true": _precision_at(hits, planted) if planted else None}
    for k in TOP_K:
        at_k[str(k)] = _precision_at(hits, k)
    score = PatternScore(
        pattern=pattern,
        entity_type=entity_type,
        planted=planted,
        flagged=flagged,
        true_positives=tp,
        precision=precision,
        recall=recall,
        average_precision=average_precision,
        precision_at_k=at_k,
        lookalikes_flagged=lookalikes,
    )
    return score, curve


def _members(groups: pd.DataFrame) -> dict[str, frozenset[str]]:
    return {
        str(gid): frozenset(map(str, frame["patient_id"]))
        for gid, frame in groups.groupby("group_id", sort=True)
    }


def match_groups(
    found: Mapping[str, frozenset[str]], planted: Mapping[str, frozenset[str]]
) -> dict[str, str]:
    """One-to-one matching of flagged groups to planted groups (flagged id -> planted id):
    a pair may match only when the Jaccard similarity of their patients is >= 0.5; the
    matching with the most pairs (then the highest total similarity) wins."""
    if not found or not planted:
        return {}
    found_ids, planted_ids = list(found), list(planted)
    similarity = np.zeros((len(found_ids), len(planted_ids)))
    for i, f in enumerate(found_ids):
        for j, p in enumerate(planted_ids):
            union = len(found[f] | planted[p])
            similarity[i, j] = len(found[f] & planted[p]) / union if union else 0.0
    weight = np.where(similarity >= JACCARD_MATCH, 1.0 + similarity, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return {found_ids[i]: planted_ids[j] for i, j in zip(rows, cols, strict=True) if weight[i, j]}


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    return pd.read_parquet(path)


def _plot_curve(
    path: Path, pattern: str, precision: np.ndarray, recall: np.ndarray, ap: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4))
    try:
        PrecisionRecallDisplay(precision=precision, recall=recall, average_precision=ap).plot(
            ax=ax, name=pattern, curve_kwargs={"drawstyle": "steps-post"}
        )
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{pattern}: precision-recall")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)


def evaluate(data_dir: Path, flags_dir: Path, out_dir: Path | None = None) -> Evaluation:
    """Score the flags in ``flags_dir`` against the truth of the province in ``data_dir``
    (``data_dir/truth``), per pattern. With ``out_dir``, write ``evaluation.json``,
    ``evaluation.md`` and one PR-curve PNG per pattern there."""
    truth_dir = data_dir / "truth"
    if not (truth_dir / "flags.parquet").exists():
        raise FileNotFoundError(
            f"{truth_dir / 'flags.parquet'}: no truth to evaluate against "
            "(only a simulated province has one)"
        )
    if not (flags_dir / "flags.parquet").exists():
        raise FileNotFoundError(f"{flags_dir / 'flags.parquet'}: no flags to evaluate")
    truth = pd.read_parquet(truth_dir / "flags.parquet")
    flags = pd.read_parquet(flags_dir / "flags.parquet")
    member_cols = ["group_id", "patient_id", "institution_id"]
    found_groups = _members(_read(flags_dir / "groups.parquet", member_cols))
    planted_groups = _members(_read(truth_dir / "groups.parquet", member_cols))
    benign = _read(truth_dir / "benign.parquet", ["entity_type", "entity_id", "lookalike_of"])
    benign_groups = _members(_read(truth_dir / "benign_groups.parquet", member_cols))

    kinds = pd.concat([truth[["pattern", "entity_type"]], flags[["pattern", "entity_type"]]])
    kinds = kinds.drop_duplicates().sort_values(["pattern", "entity_type"])
    results: list[PatternScore] = []
    curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for pattern, entity_type in kinds.itertuples(index=False):
        mine = _ranked(flags[(flags["pattern"] == pattern) & (flags["entity_type"] == entity_type)])
        planted_ids = set(
            truth.loc[
                (truth["pattern"] == pattern) & (truth["entity_type"] == entity_type), "entity_id"
            ].astype(str)
        )
        ids = mine["entity_id"].astype(str)
        if pattern == GROUP_PATTERN and entity_type == "group":
            mine_groups = {g: found_groups.get(g, frozenset()) for g in ids}
            planted_sets = {g: planted_groups.get(g, frozenset()) for g in sorted(planted_ids)}
            matched = match_groups(mine_groups, planted_sets)
            hits: np.ndarray = np.array([g in matched for g in ids], dtype=np.int64)
            lookalikes = len(match_groups(mine_groups, benign_groups))
        else:
            hits = np.asarray(ids.isin(planted_ids), dtype=np.int64)
            innocent = set(
                benign.loc[
                    (benign["lookalike_of"] == pattern) & (benign["entity_type"] == entity_type),
                    "entity_id",
                ].astype(str)
            )
            lookalikes = int(ids.isin(innocent).sum())
        score, curve = _scores(
            pattern,
            entity_type,
            hits,
            mine["score"].to_numpy(dtype=np.float64),
            len(planted_ids),
            lookalikes,
        )
        results.append(score)
        if curve is not None:
            curves[(pattern, entity_type)] = curve

    files: list[Path] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        named: list[PatternScore] = []
        for score in results:
            curve = curves.get((score.pattern, score.entity_type))
            if curve is not None and score.average_precision is not None:
                png = out_dir / f"pr_{score.pattern}_{score.entity_type}.png"
                _plot_curve(png, score.pattern, curve[0], curve[1], score.average_precision)
                files.append(png)
                score = replace(score, curve=png.name)
            named.append(score)
        results = named
    evaluation = Evaluation(patterns=results, out_dir=out_dir, files=files)
    if out_dir is not None:
        (out_dir / "evaluation.json").write_text(evaluation.to_json(), encoding="utf-8")
        (out_dir / "evaluation.md").write_text(evaluation.to_markdown(), encoding="utf-8")
        files += [out_dir / "evaluation.json", out_dir / "evaluation.md"]
    return evaluation
