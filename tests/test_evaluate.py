"""Evaluation of a screening against the truth of a simulated province.

The rule base finds every planted deterministic case and nothing else, so its flags score
precision = recall = AP = 1; a screening with planted mistakes scores exactly what those
mistakes cost; groups match planted groups one-to-one by the Jaccard similarity of their
patients; ``fundguard evaluate`` prints the table and writes it with the PR curves.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from features.flags import Flag, GroupMember, write_flags
from features.tables import DETERMINISTIC_PATTERNS
from models.evaluate import evaluate, match_groups
from serve.cli import main


@pytest.fixture(scope="module")
def rule_evaluation(province: Path, province_flags: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evaluation")
    return evaluate(province, province_flags, out)


@pytest.mark.parametrize("pattern", DETERMINISTIC_PATTERNS)
def test_the_rule_base_scores_one_on_deterministic_patterns(rule_evaluation, pattern: str) -> None:
    score = rule_evaluation.pattern(pattern)
    assert score.planted > 0
    assert score.precision == 1.0
    assert score.recall == 1.0
    assert score.average_precision == pytest.approx(1.0)
    assert score.precision_at_k["true"] == 1.0
    assert score.lookalikes_flagged == 0


def test_a_pattern_nobody_flags_has_zero_recall_and_no_precision(
    province: Path, tmp_path: Path
) -> None:
    write_flags([_flag("S-NOT-PLANTED", "over_quantity", 0.7)], tmp_path / "flags")
    result = evaluate(province, tmp_path / "flags")
    score = result.pattern("age_restriction")
    assert score.planted > 0
    assert score.flagged == 0
    assert score.recall == 0.0
    assert score.precision is None
    assert score.average_precision == 0.0
    wrong = result.pattern("over_quantity")
    assert (wrong.precision, wrong.recall, wrong.precision_at_k["20"]) == (0.0, 0.0, 0.0)


def test_files_are_written(rule_evaluation) -> None:
    out = rule_evaluation.out_dir
    table = json.loads((out / "evaluation.json").read_text())
    assert {row["pattern"] for row in table["patterns"]} >= set(DETERMINISTIC_PATTERNS)
    pngs = sorted(out.glob("pr_*.png"))
    assert len(pngs) >= len(DETERMINISTIC_PATTERNS)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "| duplicate_trace_code |" in (out / "evaluation.md").read_text()


def _flag(entity_id: str, pattern: str, score: float, entity_type: str = "settlement") -> Flag:
    return Flag(entity_type, entity_id, pattern, score, "review", Decimal("10.00"), {})


def test_mistakes_cost_what_they_should(province: Path, tmp_path: Path) -> None:
    """Half the planted over_quantity cases ranked above two false ones and a benign
    look-alike flagged as split_admission: the measures follow by hand."""
    truth = pd.read_parquet(province / "truth" / "flags.parquet")
    benign = pd.read_parquet(province / "truth" / "benign.parquet")
    planted = sorted(truth.loc[truth["pattern"] == "over_quantity", "entity_id"])
    kept = planted[: len(planted) // 2]
    innocent = benign.loc[benign["lookalike_of"] == "split_admission", "entity_id"].iloc[0]
    flags = [_flag(s, "over_quantity", 0.9) for s in kept]
    flags += [_flag("S-NOT-PLANTED-1", "over_quantity", 0.5)]
    flags += [_flag("S-NOT-PLANTED-2", "over_quantity", 0.95)]  # the top flag is wrong
    flags += [_flag(innocent, "split_admission", 1.0)]
    write_flags(flags, tmp_path / "flags")
    result = evaluate(province, tmp_path / "flags")
    oq = result.pattern("over_quantity")
    assert oq.flagged == len(kept) + 2
    assert oq.true_positives == len(kept)
    assert oq.precision == pytest.approx(len(kept) / (len(kept) + 2))
    assert oq.recall == pytest.approx(len(kept) / len(planted))
    # rank 1 wrong, then the kept ones tied at 0.9 (one threshold), then a wrong one:
    # AP over the flags is kept/(kept+1), rescaled by the share of planted cases flagged
    assert oq.average_precision == pytest.approx(
        len(kept) / (len(kept) + 1) * len(kept) / len(planted)
    )
    assert oq.precision_at_k["20"] == pytest.approx(min(19, len(kept)) / min(20, oq.flagged))
    sa = result.pattern("split_admission")
    assert sa.lookalikes_flagged == 1
    assert sa.true_positives == 0


def test_groups_match_one_to_one_by_jaccard() -> None:
    planted = {"T1": frozenset("abcd"), "T2": frozenset("wxyz")}
    found = {
        "G1": frozenset("abc"),  # 3/4 of T1
        "G2": frozenset("abcde"),  # 4/5 of T1: the better match, but only one may have T1
        "G3": frozenset("wx"),  # 2/4 of T2: exactly the threshold
        "G4": frozenset("w"),  # 1/4: too little
    }
    matched = match_groups(found, planted)
    assert sorted(matched.values()) == ["T1", "T2"]
    assert matched["G3"] == "T2"
    assert "G4" not in matched
    assert len({k for k, v in matched.items() if v == "T1"}) == 1


def test_planted_groups_found_with_a_stray_member(province: Path, tmp_path: Path) -> None:
    groups = pd.read_parquet(province / "truth" / "groups.parquet")
    flags, members = [], []
    for gid, frame in groups.groupby("group_id"):
        mine = f"X{gid}"
        flags.append(_flag(mine, "group_admission", 0.8, entity_type="group"))
        members += [
            GroupMember(mine, p, i)
            for p, i in zip(frame["patient_id"], frame["institution_id"], strict=True)
        ]
        members.append(GroupMember(mine, "P-STRAY", frame["institution_id"].iloc[0]))
    write_flags(flags, tmp_path / "flags", members)
    score = evaluate(province, tmp_path / "flags").pattern("group_admission")
    assert score.planted == groups["group_id"].nunique()
    assert score.precision == 1.0
    assert score.recall == 1.0


def test_cli_prints_the_table_and_writes_files(
    province: Path, province_flags: Path, tmp_path: Path
) -> None:
    flags_dir = tmp_path / "screen"
    flags_dir.mkdir()
    for name in ("flags.parquet", "groups.parquet"):
        (flags_dir / name).write_bytes((province_flags / name).read_bytes())
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(province), "--flags", str(flags_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "duplicate_trace_code" in result.output
    assert (flags_dir / "evaluation" / "evaluation.json").exists()


def test_cli_refuses_a_folder_without_truth(province_flags: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(tmp_path), "--flags", str(province_flags)]
    )
    assert result.exit_code != 0
    assert "truth" in result.output
