"""The evidence pictures of a case page, as inline SVG strings (no file, no pyplot).

- :func:`network_svg`: a group case's co-admission network (结伴住院). The members are
  the nodes; two members are joined when they were admitted together (the same occasion
  of the group's evidence: admissions at one institution within the analysis' window of
  each other) on at least ``MIN_OCCASIONS`` occasions, as ``models.coadmission`` joins
  two patients; the line's width is the number of such occasions. The institution is a
  node of its own (a square), linked to its members by thin dashed lines.
- :func:`peer_group_svg`: an institution case's place in its peer group on its most
  deviant features: one row per feature, on the robust z-scale the anomaly detector
  judged it by (0 is the peers' median, 1 is one robust standard deviation of the peers,
  1.4826 MAD; clipped at +-10 as the features are), the band of ordinary peers (|z| <= 1)
  shaded, the institution a marker with its value beside the peers' median.

Labels are ids and numbers only (ASCII): the machines this runs on have no CJK font
(``fc-list :lang=zh`` is empty), so the Chinese words belong to the HTML around the
picture. Patient ids reach the picture only through ``show_patient`` (the page's mask), and
no element id is derived from an entity id. The same case gives the same SVG, byte for
byte: a fixed layout seed, a fixed hash salt, no date.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Final

import matplotlib as mpl
import networkx as nx
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from serve.schemas import SHANGHAI, CaseDetailOut

MIN_OCCASIONS: Final = 2
"""Occasions two members must share to be joined (``CoAdmissionParams.min_occasions``)."""
Z_LIMIT: Final = 10.0
"""The z-scores of the institution features are clipped at this (features.institution_features)."""

MEMBER_COLOUR: Final = "#3b6ea8"
INSTITUTION_COLOUR: Final = "#c0392b"
PEER_COLOUR: Final = "#9bb7d4"

_LOCK: Final = threading.Lock()
"""matplotlib reads the SVG settings from its global rcParams while drawing: one picture at
a time (the page renders in a thread pool)."""


def _render(draw: Callable[[], Figure]) -> str:
    """The figure ``draw`` makes, as an inline ``<svg>`` element (no XML declaration, no
    DOCTYPE), drawn and written under the picture settings."""
    buffer = io.BytesIO()
    settings: dict[RcKeyType, Any] = {
        "svg.fonttype": "none",  # text stays text: small, searchable, the browser's font
        "svg.hashsalt": "fundguard",  # deterministic clip-path and marker ids
        "font.family": "DejaVu Sans",
        "font.size": 9,
    }
    with _LOCK, mpl.rc_context(settings):
        figure = draw()
        FigureCanvasSVG(figure)
        figure.savefig(
            buffer,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = buffer.getvalue().decode("utf-8")
    return text[text.index("<svg") :].strip()


# --- the co-admission network ---------------------------------------------------------------


def _day(value: str | date | datetime) -> date:
    if isinstance(value, datetime):
        return value.astimezone(SHANGHAI).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _group_evidence(detail: CaseDetailOut) -> dict[str, Any]:
    return next(
        (f.evidence for f in detail.flags if f.pattern == "group_admission"),
        {},
    )


def _occasion_of(day: date, starts: Sequence[date]) -> int | None:
    """The occasion an admission settled on ``day`` belongs to: the last one that began on
    or before it (the admissions of a group case are those of its occasions)."""
    found = None
    for index, start in enumerate(starts):
        if start <= day:
            found = index
    return found


def coadmission_edges(detail: CaseDetailOut) -> dict[tuple[str, str], int]:
    """(member, member) -> occasions both were admitted on, for the pairs that share at
    least ``MIN_OCCASIONS``; from the case's members and its flag's ``occasion_dates``."""
    occasions = _group_evidence(detail).get("occasion_dates") or []
    starts = sorted(_day(o["first_admit"]) for o in occasions if o.get("first_admit"))
    attended: dict[str, set[int]] = {}
    for member in detail.members:
        seen = {_occasion_of(_day(a), starts) for a in member.admissions}
        attended[member.patient_id] = {i for i in seen if i is not None}
    ids = sorted(attended)
    edges = {}
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            shared = len(attended[a] & attended[b])
            if shared >= MIN_OCCASIONS:
                edges[(a, b)] = shared
    return edges


def network_svg(detail: CaseDetailOut, *, show_patient: Callable[[str], str]) -> str:
    """The co-admission network of a group case (``""`` when it has no members): member
    nodes labelled ``show_patient(patient_id)``, the institution a square node, the members
    joined by the occasions they were admitted together on."""
    if not detail.members:
        return ""
    return _render(lambda: _network_figure(detail, show_patient))


def _network_figure(detail: CaseDetailOut, show_patient: Callable[[str], str]) -> Figure:
    evidence = _group_evidence(detail)
    edges = coadmission_edges(detail)
    members = sorted(m.patient_id for m in detail.members)
    index = {p: i for i, p in enumerate(members)}
    institution_of = {
        m.patient_id: m.institution_id or str(evidence.get("institution_id") or "")
        for m in detail.members
    }
    places = sorted({i for i in institution_of.values() if i})
    # the members on a circle (in id order), the institution(s) inside it: every pair is
    # visible, joined or not, however loose the group
    ring = nx.circular_layout([f"m{i}" for i in range(len(members))])
    hubs = nx.circular_layout([f"i{j}" for j in range(len(places))], scale=0.25)
    position = {n: (float(x), float(y)) for n, (x, y) in (ring | hubs).items()}
    if len(places) == 1:
        position["i0"] = (0.0, 0.0)
    size = 4.0 + 0.2 * min(len(members), 20)
    figure = Figure(figsize=(size * 1.25, size))
    ax = figure.add_axes((0.02, 0.02, 0.96, 0.88))
    ax.set_axis_off()
    for p, place in sorted(institution_of.items()):
        if place:
            (xa, ya), (xb, yb) = position[f"m{index[p]}"], position[f"i{places.index(place)}"]
            ax.plot([xa, xb], [ya, yb], color="#bbbbbb", linewidth=0.8, linestyle="--", zorder=1)
    strongest = max(edges.values(), default=1)
    for (a, b), shared in sorted(edges.items()):
        (xa, ya), (xb, yb) = position[f"m{index[a]}"], position[f"m{index[b]}"]
        line = ax.plot(
            [xa, xb],
            [ya, yb],
            color=MEMBER_COLOUR,
            alpha=0.55,
            linewidth=1.0 + 3.0 * shared / strongest,
            zorder=2,
        )[0]
        line.set_gid(f"edge-{index[a]}-{index[b]}")
    for p in members:
        x, y = position[f"m{index[p]}"]
        node = ax.scatter([x], [y], s=260, color=MEMBER_COLOUR, edgecolors="white", zorder=3)
        node.set_gid(f"member-{index[p]}")
        label = ax.text(
            1.2 * x,
            1.2 * y,
            show_patient(p),
            ha="left" if x > 0.2 else "right" if x < -0.2 else "center",
            va="bottom" if y > 0.2 else "top" if y < -0.2 else "center",
            fontsize=8,
            zorder=4,
        )
        label.set_gid(f"member-label-{index[p]}")
    for j, place in enumerate(places):
        x, y = position[f"i{j}"]
        node = ax.scatter([x], [y], s=420, marker="s", color=INSTITUTION_COLOUR, zorder=3)
        node.set_gid(f"institution-{j}")
        label = ax.text(
            x,
            y - 0.1,
            place,
            ha="center",
            va="top",
            fontsize=8,
            weight="bold",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0},
            zorder=4,
        )
        label.set_gid(f"institution-label-{j}")
    ax.set_xlim(-1.9, 1.9)
    ax.set_ylim(-1.45, 1.45)
    occasions = len(evidence.get("occasion_dates") or [])
    figure.suptitle(
        f"{len(members)} members, {occasions} occasions, "
        f"{len(edges)} of {len(members) * (len(members) - 1) // 2} pairs joined",
        fontsize=9,
    )
    return figure


# --- the peer group -------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def peer_group_svg(detail: CaseDetailOut) -> str:
    """Where an institution stands in its peer group on its most deviant features, on the
    robust z-scale of the peer group (``""`` when the case holds no peer standing)."""
    standing = detail.peer_standing or {}
    rows = [
        (str(f.get("feature")), z, _number(f.get("value")), _number(f.get("peer_median")))
        for f in standing.get("top_features") or ()
        if isinstance(f, dict) and (z := _number(f.get("z"))) is not None
    ]
    if not rows:
        return ""
    return _render(lambda: _peer_figure(detail, standing, rows))


def _peer_figure(
    detail: CaseDetailOut,
    standing: dict[str, Any],
    rows: list[tuple[str, float, float | None, float | None]],
) -> Figure:
    height = 1.2 + 0.55 * len(rows)
    figure = Figure(figsize=(8.0, height))
    ax = figure.add_axes((0.27, 0.9 / height, 0.40, 1 - 1.6 / height))
    ax.axvspan(-1, 1, color=PEER_COLOUR, alpha=0.45, zorder=0, gid="peer-band")
    ax.axvline(0, color="#555555", linewidth=1.0, zorder=1, gid="peer-median")
    for edge in (-3, 3):
        ax.axvline(edge, color="#999999", linewidth=0.8, linestyle=":", zorder=1)
    for row, (_, z, value, median) in enumerate(rows):
        y = len(rows) - 1 - row
        clipped = max(-Z_LIMIT, min(Z_LIMIT, z))
        ax.plot([0, clipped], [y, y], color=INSTITUTION_COLOUR, linewidth=1.2, zorder=2)
        marker = ax.scatter([clipped], [y], s=90, marker="D", color=INSTITUTION_COLOUR, zorder=3)
        marker.set_gid(f"institution-{row}")
        shown = "" if value is None else f"{value:.4g}"
        peers = "" if median is None else f"{median:.4g}"
        note = ax.text(
            1.03,
            y,
            f"{shown} vs peers' {peers} (z {z:+.1f}{', clipped' if abs(z) >= Z_LIMIT else ''})",
            transform=ax.get_yaxis_transform(),
            fontsize=8,
            va="center",
            clip_on=False,
        )
        note.set_gid(f"value-{row}")
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(-Z_LIMIT - 0.5, Z_LIMIT + 0.5)
    ax.set_xlabel("robust z within the peer group (0 = peers' median)")
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    size = standing.get("peer_group_size")
    group = str(standing.get("peer_group") or "")
    title = f"{detail.entity_id} in peer group {group}" + (
        f" ({size} institutions)" if size else ""
    )
    score, threshold = _number(standing.get("score")), _number(standing.get("threshold"))
    if score is not None and threshold is not None:
        title += f"\nanomaly score {score:.3f}, threshold {threshold:.3f}"
    figure.suptitle(title, fontsize=9)
    return figure
