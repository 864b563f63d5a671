"""``fundguard rules`` as policy staff meet it: list, check, test and backtest a rule file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from rules.base import shipped_bytes, shipped_rulebase
from serve.cli import main

NEW_LIMIT = """
  - id: OF101
    template: over_frequency
    params: {items: ["250101001"], max_times: 2, period_days: 30}
    action: review
    severity: low
    message: {zh: 血常规30天内超过2次, en: full blood count more than twice in 30 days}
    examples:
      hit: [{times_in_period: 3}]
      no_hit: [{times_in_period: 2}]
"""


def changed_file(tmp_path: Path, extra: str = NEW_LIMIT, edit: tuple[str, str] = ("", "")) -> Path:
    path = tmp_path / "candidate.yaml"
    text = shipped_bytes().decode().replace(*edit) if edit[0] else shipped_bytes().decode()
    path.write_text(text + extra, encoding="utf-8")
    return path


def test_list_shows_the_rule_base_in_force() -> None:
    result = CliRunner().invoke(main, ["rules", "list"])
    assert result.exit_code == 0, result.output
    rulebase = shipped_rulebase()
    assert f"version {rulebase.version}, sha256 {rulebase.checksum[:12]}" in result.output
    for rule in rulebase.rules:
        assert rule.id in result.output
        assert rule.message_zh in result.output


def test_check_accepts_a_good_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = changed_file(tmp_path)
    result = CliRunner().invoke(main, ["rules", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "12 rule(s)" in result.output
    bad = changed_file(tmp_path, NEW_LIMIT.replace("max_times: 2", "max_times: two"))
    result = CliRunner().invoke(main, ["rules", "check", str(bad)])
    assert result.exit_code != 0
    assert "rule OF101: params.max_times: Input should be a valid integer" in result.output
    assert "refused" in result.output
    missing = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0
    assert "Traceback" not in missing.output


def test_test_runs_every_example_and_names_the_failing_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "test", str(changed_file(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "all 42 example(s) of 12 rule(s) pass" in result.output
    wrong = changed_file(
        tmp_path,
        NEW_LIMIT.replace("no_hit: [{times_in_period: 2}]", "no_hit: [{times_in_period: 5}]"),
    )
    result = CliRunner().invoke(main, ["rules", "test", str(wrong)])
    assert result.exit_code != 0
    assert "rule OF101: examples.no_hit[0]" in result.output
    assert "expected no hit, got hit" in result.output


def test_backtest_shows_what_a_changed_file_would_flag_differently(
    province: Path, tmp_path: Path
) -> None:
    # a new limit adds hits; a narrower readmission gap removes some
    candidate = changed_file(
        tmp_path,
        edit=(
            "params: {max_gap_days: 15, diagnosis_chars: 3}",
            "params: {max_gap_days: 3, diagnosis_chars: 3}",
        ),
        extra=NEW_LIMIT,
    )
    candidate.write_text(
        candidate.read_text(encoding="utf-8").replace(
            "- {days_since_discharge: 15}\n      no_hit:\n        - {days_since_discharge: 16}",
            "- {days_since_discharge: 3}\n      no_hit:\n        - {days_since_discharge: 4}",
        ),
        encoding="utf-8",
    )
    assert CliRunner().invoke(main, ["rules", "test", str(candidate)]).exit_code == 0
    result = CliRunner().invoke(
        main, ["rules", "backtest", str(candidate), "--data", str(province)]
    )
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line.split()
        for line in result.output.splitlines()
        if line.startswith("  ") and len(line.split()) == 6
    }
    of101 = rows["OF101"]
    assert of101[2] == "-"  # not in force
    assert int(of101[3]) == int(of101[4]) > 0  # every hit is added
    sa001 = rows["SA001"]
    assert int(sa001[5]) > 0  # removed
    assert int(sa001[3]) == int(sa001[2]) - int(sa001[5])
    assert rows["TC002"][4:] == ["0", "0"]
    added = [line for line in result.output.splitlines() if line.startswith("  + ")]
    removed = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(added) == int(of101[4])
    assert len(removed) == int(sa001[5])
    assert all("OF101" in line for line in added)
    # a settlement already flagged over_frequency by OF001 gets no new flag, only a new rule
    (summary,) = [line for line in result.output.splitlines() if line.startswith("flags: ")]
    assert 0 < int(summary.split()[1]) <= len(added)
    assert f"{len(removed)} removed" in summary
