"""The evidence pictures of the case pages (``serve.web.pictures``), drawn from the real
cases of the small province (seed 7) loaded, screened and filed into a store."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from test_cases import read_screening

from serve import cases
from serve.loading import load_folder
from serve.schemas import CaseDetailOut
from serve.store import create_store_engine
from serve.tables import cases as cases_table
from serve.tables import institutions
from serve.web.pictures import coadmission_edges, network_svg, peer_group_svg

pytestmark = pytest.mark.slow

SVG = "{http://www.w3.org/2000/svg}"
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _everyone(_region: str) -> bool:
    return True


def mask(patient_id: str) -> str:
    """The pages' mask: the first two and the last four characters."""
    return patient_id[:2] + "*" * (len(patient_id) - 6) + patient_id[-4:]


@pytest.fixture(scope="module")
def screened_store(
    province: Path, province_screened: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The province loaded into a SQLite store, screened, its flags filed as cases."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pictures') / 'store.db'}"
    load_folder(province, url)
    engine = create_store_engine(url)
    flags, members = read_screening(province_screened)
    with engine.begin() as conn:
        cases.file_screening(conn, flags, members)
    try:
        yield engine
    finally:
        engine.dispose()


def details(engine: Engine, entity_type: str) -> list[CaseDetailOut]:
    with engine.connect() as conn:
        ids = conn.execute(
            select(cases_table.c.case_id)
            .where(cases_table.c.entity_type == entity_type)
            .order_by(cases_table.c.case_id)
        ).scalars()
        return [cases.case_detail(conn, i, visible=_everyone) for i in ids]


def parse(svg: str) -> ET.Element:
    assert svg.startswith("<svg")  # inline: no XML declaration, no DOCTYPE
    assert len(svg.encode()) < 200_000
    root = ET.fromstring(svg)  # noqa: S314 - valid XML (our own picture, not untrusted input)
    assert root.tag == f"{SVG}svg"
    assert not list(root.iter(f"{SVG}image"))  # self-contained: no image, no link out
    assert set(re.findall(r"https?://[^\"' )]*", svg)) <= NAMESPACES
    return root


def by_id(root: ET.Element) -> dict[str, ET.Element]:
    return {e.get("id", ""): e for e in root.iter() if e.get("id")}


def texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()).strip() for t in element.iter(f"{SVG}text")]


def test_every_group_case_draws_its_members_masked_and_its_institution(
    screened_store: Engine,
) -> None:
    groups = details(screened_store, "group")
    assert len(groups) >= 3
    for detail in groups:
        svg = network_svg(detail, show_patient=mask)
        root = parse(svg)
        ids = by_id(root)
        members = sorted(m.patient_id for m in detail.members)
        assert len(members) >= 2
        for i, patient in enumerate(members):
            assert f"member-{i}" in ids  # the node
            assert texts(ids[f"member-label-{i}"]) == [mask(patient)]
            assert patient not in svg  # no unmasked id anywhere, ids and attributes included
        [flag] = [f for f in detail.flags if f.pattern == "group_admission"]
        assert "institution-0" in ids  # the institution's marker
        assert texts(ids["institution-label-0"]) == [flag.evidence["institution_id"]]
        # the joined pairs are those of the co-admission analysis
        edges = [i for i in ids if i.startswith("edge-")]
        assert len(edges) == flag.evidence["edges"]["count"] == len(coadmission_edges(detail))
        assert max(coadmission_edges(detail).values()) == flag.evidence["edges"]["max_weight"]
        assert network_svg(detail, show_patient=mask) == svg  # deterministic


def test_the_labels_are_what_show_patient_says(screened_store: Engine) -> None:
    detail = details(screened_store, "group")[0]
    shown = network_svg(detail, show_patient=lambda p: p)
    assert all(m.patient_id in shown for m in detail.members)  # revealed: the real ids


def test_an_institution_case_shows_where_it_stands_in_its_peer_group(
    screened_store: Engine,
) -> None:
    flagged = [d for d in details(screened_store, "institution") if d.peer_standing]
    assert flagged
    with screened_store.connect() as conn:
        for detail in flagged:
            standing = detail.peer_standing or {}
            assert detail.institution is not None
            kind, level, region = str(standing["peer_group"]).split("|")
            assert standing["peer_group_level"] == "kind_level_region"
            peers = conn.execute(
                select(func.count())
                .select_from(institutions)
                .where(
                    institutions.c.kind == kind,
                    institutions.c.level == int(level),
                    institutions.c.region_code == region,
                )
            ).scalar_one()
            assert standing["peer_group_size"] == peers >= 5  # MIN_PEERS
            svg = peer_group_svg(detail)
            ids = by_id(parse(svg))
            features = standing["top_features"]
            assert features
            for row, feature in enumerate(features):
                assert f"institution-{row}" in ids  # the institution's marker per feature
                [note] = texts(ids[f"value-{row}"])
                assert note.startswith(f"{feature['value']:.4g} vs peers' ")
            assert "peer-band" in ids
            assert "peer-median" in ids
            ticks = set(texts(ET.fromstring(svg)))  # noqa: S314 - our own picture
            assert {f["feature"] for f in features} <= ticks
            assert detail.entity_id in svg
            assert peer_group_svg(detail) == svg


def test_nothing_to_draw_is_an_empty_string(screened_store: Engine) -> None:
    settlement = details(screened_store, "settlement")[0]
    group = details(screened_store, "group")[0]
    assert network_svg(settlement, show_patient=mask) == ""
    assert peer_group_svg(settlement) == ""
    assert peer_group_svg(group) == ""
    no_features = settlement.model_copy(update={"peer_standing": {"top_features": []}})
    assert peer_group_svg(no_features) == ""
