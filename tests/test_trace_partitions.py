"""The trace-code screening in code partitions gives exactly the flags of one partition.

``traceability.batch.screen_codes`` screens the history partition by partition (by hash of
the canonical code); the partitions share only the set of rejected settlements, round after
round. Forcing several partitions must change nothing: not on a simulated province, and not
where a settlement's two codes fall into different partitions and one of them gets it
rejected, so that the other code's pack stays free for a later sale. The spill DuckDB may
write is bounded, and the partitions written beside it are removed afterwards.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from test_trace_checks import Sale, Scenario, code, h, write_history

from features.batch import SPILL_CAP_BYTES, open_history
from traceability.batch import CodeHit, code_partition, screen_codes, setting_bytes
from traceability.checks import TracePattern


def screened(folder: Path, partitions: int, spill: Path) -> tuple[list[CodeHit], set[str]]:
    """The code hits of the history in ``folder`` screened in ``partitions`` partitions, and
    the settlements left rejected (``not_consuming``)."""
    con = open_history(folder, temp_directory=spill)
    try:
        hits = screen_codes(con, partitions=partitions)
        rejected = {r[0] for r in con.execute("SELECT settlement_id FROM not_consuming").fetchall()}
        n_parts = con.execute(
            "SELECT count(DISTINCT hash(canonical) % ?) FROM resolved WHERE canonical IS NOT NULL",
            [partitions],
        ).fetchall()[0][0]
    finally:
        con.close()
    assert n_parts == partitions, "every partition holds codes"
    return hits, rejected


def test_partitions_give_the_flags_of_one_partition_on_a_province(
    province: Path, tmp_path: Path
) -> None:
    one, rejected_one = screened(province, 1, tmp_path / "spill")
    several, rejected_several = screened(province, 4, tmp_path / "spill")
    assert {h.pattern for h in one} >= {TracePattern.DUPLICATE, TracePattern.MISSING}
    assert several == one
    assert rejected_several == rejected_one == {h.settlement_id for h in one}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "spill"]
    assert leftovers == [], "the code partitions are removed after the screening"


def codes_in_two_partitions(partitions: int) -> tuple[str, str]:
    """Two codes of drug D1's product that fall into different partitions."""
    con = duckdb.connect()
    try:
        by_part: dict[int, str] = {}
        for serial in range(1, 100):
            c = code("8100001", serial)
            by_part.setdefault(code_partition(con, c, partitions), c)
            if len(by_part) > 1:
                first, second = sorted(by_part)[:2]
                return by_part[first], by_part[second]
    finally:
        con.close()
    raise AssertionError("no two codes in different partitions")


def test_a_rejection_in_one_partition_frees_a_pack_in_another(tmp_path: Path) -> None:
    x, y = codes_in_two_partitions(2)
    con = duckdb.connect()
    assert code_partition(con, x, 2) != code_partition(con, y, 2)
    con.close()
    scenario = Scenario(
        "S2 resells X, so it is rejected and takes no Y: S3 may sell Y",
        [(x, "I1", h(-24), "purchase"), (y, "I1", h(-24), "purchase")],
        [
            Sale("S1", h(0), "I1", [("D1", 30, [x], False)]),
            Sale(
                "S2",
                h(1),
                "I1",
                [("D1", 30, [x], False), ("D1", 30, [y], False)],
                {TracePattern.DUPLICATE},
            ),
            Sale("S3", h(2), "I1", [("D1", 30, [y], False)]),
        ],
    )
    folder = tmp_path / "history"
    write_history(folder, scenario)
    one, rejected_one = screened(folder, 1, tmp_path / "spill")
    two, rejected_two = screened(folder, 2, tmp_path / "spill")
    assert [(hit.settlement_id, hit.pattern) for hit in one] == [("S2", TracePattern.DUPLICATE)]
    assert one[0].codes == (x,)
    assert one[0].earlier_settlements == ("S1",)
    assert two == one
    assert rejected_two == rejected_one == {"S2"}


def test_open_history_bounds_the_spill(province: Path, tmp_path: Path) -> None:
    con = open_history(province, temp_directory=tmp_path / "spill")
    try:
        assert 0 < setting_bytes(con, "max_temp_directory_size") <= SPILL_CAP_BYTES
    finally:
        con.close()
    con = open_history(
        province,
        memory_limit="64MB",
        threads=1,
        temp_directory=tmp_path / "spill",
        max_temp_directory_size="16MiB",
    )
    try:
        with pytest.raises(duckdb.OutOfMemoryException, match="max_temp_directory_size"):
            con.execute(
                """SELECT count(*) FROM (
                       SELECT i, md5(i::VARCHAR) AS s FROM range(3000000) t(i) ORDER BY s)"""
            ).fetchall()
    finally:
        con.close()
