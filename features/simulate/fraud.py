"""Planted fraud cases and the benign look-alikes that must never be flagged.

Actors (patients in a planted or benign case) are drawn from the population so
that their own background cannot interact with the planted lines: an actor has no
background line of any item its case uses, no background inpatient stay when the
case is an admission, and takes part in one case only. Which deterministic
patterns each planted settlement exhibits is then established by the audit
(`features.simulate.audit`), not assumed; `intended` lists what each case must at
least exhibit, and the orchestration checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.simulate.catalog import (
    HOARDABLE,
    INFLATABLE_SERVICES,
    KIND_CLINIC,
    KIND_HOSPITAL,
    KIND_PHARMACY,
    KIND_PRIMARY,
    OUTPATIENT_DX,
    SUBSTITUTES,
    SVC_BED,
    SVC_BLOOD,
    SVC_CONSULT,
    SVC_ECG,
    SVC_HBA1C,
    SVC_NURSING,
    THIN_DX,
    Catalog,
    Institutions,
)
from features.simulate.claims import (
    EMPTY_CODES,
    EV_PURCHASE,
    EV_RETURN,
    IT_DRUG,
    IT_SERVICE,
    NO_CODES,
    ORIGIN_BENIGN,
    ORIGIN_PLANTED,
    VT_INP,
    VT_OUT,
    VT_PHARM,
    Claims,
)
from features.simulate.config import DAY, HOUR, YEAR_DAYS, ScaleConfig, SimulationError, age_on
from features.simulate.population import Population
from features.simulate.settlements import ALL_DX, product_for, unit_prices
from features.simulate.spelling import N_VARIANTS, CodeBook


@dataclass
class Line:
    itype: int
    item: int
    qty: int
    split: bool = False
    codes: list[tuple[int, int]] = field(default_factory=list)
    """(pack key, spelling variant) or (-1, literal index) for an invalid spelling."""
    nocode: int = NO_CODES
    price_permille: int = 1000
    """Multiplier on the institution's usual price (anomalous settlements inflate it)."""


@dataclass(frozen=True)
class EntityTruth:
    entity_type: str  # settlement, patient, institution, group
    ref: int | str  # sid, patient index, institution index, group id
    pattern: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class BenignTruth:
    entity_type: str
    ref: int | str
    kind: str
    lookalike_of: str


@dataclass
class Planted:
    claims: Claims
    explicit_events: pd.DataFrame
    no_auto: np.ndarray
    intended: dict[int, set[str]]
    scenario: dict[int, str]
    entities: list[EntityTruth]
    benign: list[BenignTruth]
    groups: list[tuple[str, int, int]]
    benign_groups: list[tuple[str, int, int]]


class Planter:
    """Builds the planted and benign settlements on top of a finished background."""

    def __init__(
        self,
        cfg: ScaleConfig,
        cat: Catalog,
        inst: Institutions,
        pop: Population,
        book: CodeBook,
        background: Claims,
        rng: np.random.Generator,
    ) -> None:
        self.cfg, self.cat, self.inst, self.pop, self.book, self.rng = (
            cfg,
            cat,
            inst,
            pop,
            book,
            rng,
        )
        self.bg = background
        self.next_sid = int(background.s["sid"].max()) + 1
        self.s_rows: list[tuple[int, ...]] = []
        self.l_rows: list[tuple[int, Line]] = []
        self.events: list[tuple[int, int, int, int]] = []
        self.no_auto: list[int] = []
        self.intended: dict[int, set[str]] = {}
        self.scenario: dict[int, str] = {}
        self.entities: list[EntityTruth] = []
        self.benign: list[BenignTruth] = []
        self.groups: list[tuple[str, int, int]] = []
        self.benign_groups: list[tuple[str, int, int]] = []
        self.used_patients: set[int] = set()
        self.used_keys: set[int] = set()
        self.hubs: set[int] = set()

        bs, bl = background.s, background.l
        srow = (
            pd.Series(np.arange(len(bs)), index=bs["sid"].to_numpy())
            .reindex(bl["sid"].to_numpy())
            .to_numpy()
        )
        self._bg_srow = srow
        pairs = (
            bs["patient"].to_numpy()[srow] * 4096
            + bl["itype"].to_numpy().astype(np.int64) * 1024
            + bl["item"].to_numpy()
        )
        self.bg_pairs = np.sort(pairs)  # duplicates are harmless for membership tests
        self.bg_inpatients = np.unique(bs.loc[bs["vtype"] == VT_INP, "patient"].to_numpy())
        order = np.argsort(pop.locality, kind="stable")
        self._by_locality = np.split(order, np.flatnonzero(np.diff(pop.locality[order])) + 1)
        self._region_localities = {
            int(r): np.flatnonzero(pop.region[[g[0] for g in self._by_locality]] == r)
            for r in np.unique(pop.region)
        }
        self.age_start = age_on(pop.birth_day, np.zeros(len(pop), np.int64))
        self.age_end = age_on(pop.birth_day, np.full(len(pop), YEAR_DAYS - 1))
        self.svc = {
            c: cat.service(c)
            for c in (SVC_CONSULT, SVC_BED, SVC_NURSING, SVC_BLOOD, SVC_ECG, SVC_HBA1C)
        }

    # ================================================================ helpers
    def _choice(self, values: np.ndarray | list[Any] | tuple[Any, ...]) -> Any:
        if len(values) == 0:
            msg = "nothing to choose from"
            raise SimulationError(msg)
        return values[int(self.rng.integers(len(values)))]

    def institutions(
        self, kinds: tuple[int, ...], *, region: int | None = None, min_level: int = 0
    ) -> np.ndarray:
        m = np.isin(self.inst.kind, kinds) & ~self.inst.anomalous & (self.inst.level >= min_level)
        if region is not None:
            m &= self.inst.region == region
        return np.flatnonzero(m)

    def any_institution(
        self, kinds: tuple[int, ...], *, min_level: int = 0, exclude: set[int] | None = None
    ) -> int:
        cands = [
            i
            for i in self.institutions(kinds, min_level=min_level)
            if not exclude or i not in exclude
        ]
        return int(self._choice(cands))

    def drug_ok(self, p: int, d: int) -> bool:
        g = self.cat.drug_gender[d]
        return (g == 0 or g == self.pop.gender[p]) and bool(
            self.age_start[p] >= self.cat.drug_min_age[d]
            and self.age_end[p] <= self.cat.drug_max_age[d]
        )

    def svc_ok(self, p: int, v: int) -> bool:
        g = self.cat.svc_gender[v]
        return (g == 0 or g == self.pop.gender[p]) and bool(
            self.age_start[p] >= self.cat.svc_min_age[v]
            and self.age_end[p] <= self.cat.svc_max_age[v]
        )

    def _bg_has(self, p: int, itype: int, item: int) -> bool:
        k = p * 4096 + itype * 1024 + item
        i = int(np.searchsorted(self.bg_pairs, k))
        return i < len(self.bg_pairs) and int(self.bg_pairs[i]) == k

    def _bg_inpatient(self, p: int) -> bool:
        i = int(np.searchsorted(self.bg_inpatients, p))
        return i < len(self.bg_inpatients) and int(self.bg_inpatients[i]) == p

    def patient(
        self,
        *,
        region: int | None = None,
        candidates: np.ndarray | None = None,
        gender: int | None = None,
        age: tuple[int, int] = (0, 200),
        drugs: tuple[int, ...] = (),
        services: tuple[int, ...] = (),
        eligible: bool = True,
        no_inpatient: bool = False,
        attempts: int = 50_000,
    ) -> int:
        """A fresh actor: isolated from its background for the items it will use."""
        n = len(self.pop)
        for _ in range(attempts):
            p = (
                int(candidates[self.rng.integers(len(candidates))])
                if candidates is not None
                else int(self.rng.integers(n))
            )
            if p in self.used_patients:
                continue
            if region is not None and self.pop.region[p] != region:
                continue
            if gender is not None and self.pop.gender[p] != gender:
                continue
            if not (self.age_start[p] >= age[0] and self.age_end[p] <= age[1]):
                continue
            if eligible and not all(self.drug_ok(p, d) for d in drugs):
                continue
            if eligible and not all(self.svc_ok(p, v) for v in services):
                continue
            if any(self._bg_has(p, IT_DRUG, d) for d in drugs) or any(
                self._bg_has(p, IT_SERVICE, v) for v in services
            ):
                continue
            if no_inpatient and self._bg_inpatient(p):
                continue
            self.used_patients.add(p)
            return p
        msg = f"no actor patient found (region={region}, gender={gender}, age={age}, drugs={drugs})"
        raise SimulationError(msg)

    def when(self, day: int, vtype: int) -> int:
        if vtype == VT_PHARM:
            return day * DAY + 9 * HOUR + int(self.rng.integers(0, 11 * HOUR))
        if vtype == VT_INP:
            return day * DAY + 9 * HOUR + int(self.rng.integers(0, 7 * HOUR))
        return day * DAY + 8 * HOUR + 1800 + int(self.rng.integers(0, 8 * HOUR))

    def fresh(self, inst_idx: int, drug: int) -> int:
        prod = int(product_for(self.cat, np.array([inst_idx]), np.array([drug]), self.book.salt)[0])
        key = self.book.allocate_one(prod)
        self.used_keys.add(key)
        return key

    def var(self) -> int:
        return int(self.rng.integers(N_VARIANTS))

    def other_var(self, v: int) -> int:
        return (v + 1 + int(self.rng.integers(N_VARIANTS - 1))) % N_VARIANTS

    def pack_line(self, inst_idx: int, drug: int, packs: int = 1) -> Line:
        keys = [self.fresh(inst_idx, drug) for _ in range(packs)]
        return Line(
            IT_DRUG,
            drug,
            packs * int(self.cat.drug_pack[drug]),
            codes=[(k, self.var()) for k in keys],
        )

    def settle(
        self,
        patient: int,
        inst_idx: int,
        t: int,
        vtype: int,
        lines: list[Line],
        *,
        scenario: str,
        intended: tuple[str, ...] = (),
        origin: int = ORIGIN_PLANTED,
        admit: int = -1,
        discharge: int = -1,
        diag: str | None = None,
        rev_t: int = -1,
    ) -> int:
        sid = self.next_sid
        self.next_sid += 1
        if vtype == VT_OUT and not any(
            ln.itype == IT_SERVICE and ln.item == self.svc[SVC_CONSULT] for ln in lines
        ):
            lines = [Line(IT_SERVICE, self.svc[SVC_CONSULT], 1), *lines]
        docs = int(self.inst.doc_count[inst_idx])
        doctor = int(self.inst.doc_start[inst_idx]) + int(self.rng.integers(docs)) if docs else -1
        if diag is None and vtype == VT_OUT:
            diag = str(self._choice(OUTPATIENT_DX))
        dx = ALL_DX.index(diag) if diag is not None else -1
        self.s_rows.append(
            (sid, patient, inst_idx, doctor, t, vtype, admit, discharge, dx, origin, rev_t)
        )
        for ln in lines:
            self.l_rows.append((sid, ln))
        self.intended[sid] = set(intended)
        self.scenario[sid] = scenario
        return sid

    def stay(
        self,
        patient: int,
        inst_idx: int,
        admit: int,
        los: int,
        dx: str,
        *,
        scenario: str,
        drugs: tuple[int, ...],
        intended: tuple[str, ...] = (),
        origin: int = ORIGIN_PLANTED,
    ) -> int:
        lines = [
            Line(IT_SERVICE, self.svc[SVC_BED], los),
            Line(IT_SERVICE, self.svc[SVC_NURSING], los),
            Line(IT_SERVICE, self.svc[SVC_BLOOD], 1),
            Line(IT_SERVICE, self.svc[SVC_ECG], 1),
        ]
        for d in drugs:
            packs = los if self.cat.drug_pack[d] == 1 else 1
            lines.append(self.pack_line(inst_idx, d, packs))
        t = self.when(admit + los, VT_INP)
        return self.settle(
            patient,
            inst_idx,
            t,
            VT_INP,
            lines,
            scenario=scenario,
            intended=intended,
            origin=origin,
            admit=admit,
            discharge=admit + los,
            diag=dx,
        )

    def drug_visit(self, patient: int, inst_idx: int, day: int, line: Line, **kw: Any) -> int:
        vtype = VT_PHARM if self.inst.kind[inst_idx] == KIND_PHARMACY else VT_OUT
        return self.settle(patient, inst_idx, self.when(day, vtype), vtype, [line], **kw)

    # ================================================================ fraud
    def rings(self) -> None:
        """回流药: hoarders buy a high-value drug at >= 3 institutions; a hub pharmacy resells the packs."""
        cat = self.cat
        for r in range(self.cfg.rings):
            hub = self.any_institution((KIND_PHARMACY,), exclude=self.hubs)
            self.hubs.add(hub)
            region = int(self.inst.region[hub])
            drug = cat.drug(HOARDABLE[r % len(HOARDABLE)])
            pack, mx = int(cat.drug_pack[drug]), int(cat.drug_max[drug])
            cands = [
                i
                for i in np.concatenate(
                    [
                        self.institutions((KIND_PHARMACY,), region=region),
                        self.institutions((KIND_HOSPITAL,), region=region, min_level=2),
                    ]
                )
                if i != hub
            ]
            sales: list[tuple[int, int, list[tuple[int, int]]]] = []  # (day, sid, codes)
            for _ in range(int(self.rng.integers(2, 5))):
                p = self.patient(region=region, drugs=(drug,), age=(25, 85))
                span = int(self.rng.integers(40, 91))
                start = int(self.rng.integers(5, YEAR_DAYS - span - 45))
                n_inst = int(self.rng.integers(3, min(5, len(cands)) + 1))
                insts = [int(i) for i in self.rng.choice(cands, n_inst, replace=False)]
                n_buy = int(self.rng.integers(max(4, n_inst), 9))
                days = np.sort(
                    start + self.rng.choice(np.arange(1, span), n_buy - 2, replace=False)
                )
                days = [start, *days.tolist(), start + span]
                need = math.ceil(4 * mx * (span + 30) / pack)
                total = need + int(self.rng.integers(0, 4))
                packs = 1 + self.rng.multinomial(total - n_buy, np.full(n_buy, 1 / n_buy))
                used_insts: set[int] = set()
                for k, (day, n_packs) in enumerate(zip(days, packs, strict=True)):
                    where = insts[k % n_inst]
                    used_insts.add(where)
                    line = self.pack_line(where, drug, int(n_packs))
                    sid = self.drug_visit(p, where, day, line, scenario="ring_hoarder")
                    sales.append((day, sid, line.codes))
                units = total * pack
                self.entities.append(
                    EntityTruth(
                        "patient",
                        p,
                        "drug_hoarding",
                        {
                            "scenario": "ring_hoarder",
                            "ring": r,
                            "drug_code": str(cat.drugs["drug_code"].iat[drug]),
                            "units": units,
                            "days": span + 30,
                            "ratio": round(units / (mx * (span + 30)), 2),
                            "institutions": len(used_insts),
                        },
                    )
                )
            resold = 0
            for day, _sid, codes in sales:
                i = 0
                while i < len(codes):
                    take = min(int(self.rng.integers(1, 3)), len(codes) - i)
                    chunk = codes[i : i + take]
                    i += take
                    if self.rng.random() < 0.2:
                        continue
                    rday = day + int(self.rng.integers(1, 21))
                    if rday >= YEAR_DAYS:
                        continue
                    buyer = self.patient(region=region, drugs=(drug,), age=(25, 85))
                    line = Line(
                        IT_DRUG, drug, take * pack, codes=[(k, self.other_var(v)) for k, v in chunk]
                    )
                    self.drug_visit(
                        buyer,
                        hub,
                        rday,
                        line,
                        scenario="ring_hub_resale",
                        intended=("duplicate_trace_code", "unpurchased_trace_code"),
                    )
                    resold += take
            self.entities.append(
                EntityTruth(
                    "institution",
                    hub,
                    "resale_hub",
                    {
                        "scenario": "ring_hub",
                        "ring": r,
                        "drug_code": str(cat.drugs["drug_code"].iat[drug]),
                        "resold_packs": resold,
                    },
                )
            )

    def _pharmacy_drug(self) -> int:
        w = self.cat.drug_weights[2] * (~self.cat.drug_high_value)
        return int(self.rng.choice(len(w), p=w / w.sum()))

    def fake_sales(self) -> None:
        """虚售: a pharmacy settles a code it never received, one it returned, one it already sold."""
        cat = self.cat
        n = self.cfg.cases
        modes = ("never_received", "returned", "already_sold")
        bs, bl = self.bg.s, self.bg.l
        srow = self._bg_srow
        resold_cands = np.flatnonzero(
            (bl["itype"].to_numpy() == IT_DRUG)
            & ~bl["split"].to_numpy()
            & (bl["ncodes"].to_numpy() == 1)
            & (self.inst.kind[bs["inst"].to_numpy()[srow]] == KIND_PHARMACY)
            & ~self.inst.anomalous[bs["inst"].to_numpy()[srow]]
            & (bs["rev_t"].to_numpy()[srow] < 0)
            & (bs["t"].to_numpy()[srow] < (YEAR_DAYS - 20) * DAY)
        )
        for k in range(n):
            mode = modes[k % 3]
            if mode == "already_sold":
                for _ in range(1000):
                    li = int(self._choice(resold_cands))
                    key = int(self.bg.code_key[int(bl["cstart"].iat[li])])
                    if key not in self.used_keys:
                        break
                self.used_keys.add(key)
                drug = int(bl["item"].iat[li])
                ph = int(bs["inst"].iat[srow[li]])
                day = int(bs["t"].iat[srow[li]]) // DAY + int(self.rng.integers(1, 16))
                p = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
                line = Line(IT_DRUG, drug, int(cat.drug_pack[drug]), codes=[(key, self.var())])
                self.drug_visit(
                    p,
                    ph,
                    day,
                    line,
                    scenario="fake_sale_already_sold",
                    intended=("duplicate_trace_code",),
                )
                continue
            ph = self.any_institution((KIND_PHARMACY,))
            drug = self._pharmacy_drug()
            p = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
            day = int(self.rng.integers(70, YEAR_DAYS))
            key = self.fresh(ph, drug)
            self.no_auto.append(key)
            t = self.when(day, VT_PHARM)
            if mode == "returned":
                t_in = t - int(self.rng.integers(20, 61)) * DAY
                self.events.append((key, ph, EV_PURCHASE, t_in))
                self.events.append((key, ph, EV_RETURN, t_in + int(self.rng.integers(3, 16)) * DAY))
            elif k % 2:
                other = self.any_institution((KIND_PHARMACY,), exclude={ph})
                self.events.append(
                    (key, other, EV_PURCHASE, t - int(self.rng.integers(5, 61)) * DAY)
                )
            line = Line(IT_DRUG, drug, int(cat.drug_pack[drug]), codes=[(key, self.var())])
            self.settle(
                p,
                ph,
                t,
                VT_PHARM,
                [line],
                scenario=f"fake_sale_{mode}",
                intended=("unpurchased_trace_code",),
            )

    def split_overruns(self) -> None:
        """拆零 beyond the pack: three split sales of one code whose units exceed pack_units."""
        cat = self.cat
        splittable = np.flatnonzero(
            cat.drug_split_ok & ~cat.drug_high_value & (cat.drug_gender == 0)
        )
        for _ in range(self.cfg.cases):
            ph = self.any_institution((KIND_PHARMACY,))
            drug = int(self._choice(splittable))
            pack = int(cat.drug_pack[drug])
            u1 = max(1, math.ceil(pack * self.rng.uniform(0.3, 0.5)))
            u2 = max(1, min(pack - u1 - 1, math.ceil(pack * self.rng.uniform(0.2, 0.4))))
            u3 = min(pack - 1, pack - u1 - u2 + int(self.rng.integers(1, max(2, pack // 4) + 1)))
            key = self.fresh(ph, drug)
            v = self.var()
            day = int(self.rng.integers(5, YEAR_DAYS - 40))
            for j, units in enumerate((u1, u2, u3)):
                p = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
                day += int(self.rng.integers(1, 10))
                line = Line(
                    IT_DRUG, drug, units, split=True, codes=[(key, v if j == 0 else self.var())]
                )
                self.drug_visit(
                    p,
                    ph,
                    day,
                    line,
                    scenario="split_overrun",
                    intended=("split_sale_overrun",) if j == 2 else (),
                )

    def substitutions(self) -> None:
        """串换: a red-list drug is billed while the pack of a cheaper drug is scanned."""
        cat = self.cat
        pairs = [(cat.drug(a), cat.drug(b)) for a, b in SUBSTITUTES.items()]
        for _ in range(self.cfg.cases):
            billed, handed = pairs[int(self.rng.integers(len(pairs)))]
            where = self.any_institution((KIND_PHARMACY, KIND_CLINIC))
            p = self.patient(region=int(self.inst.region[where]), drugs=(billed, handed))
            key = self.fresh(where, handed)
            line = Line(IT_DRUG, billed, int(cat.drug_pack[billed]), codes=[(key, self.var())])
            day = int(self.rng.integers(0, YEAR_DAYS))
            self.drug_visit(
                p, where, day, line, scenario="substitution", intended=("trace_code_mismatch",)
            )

    def missing_codes(self) -> None:
        """无码: no code (null or empty list), a GS1 code with a wrong check digit, garbage."""
        cat = self.cat
        imported_drugs = sorted(
            {int(d) for d in cat.prod_drug[cat.prod_imported]}
            - set(np.flatnonzero(cat.drug_high_value))
        )
        for k in range(self.cfg.cases):
            mode = ("null", "empty", "bad_check", "garbage")[k % 4]
            where = self.any_institution((KIND_PHARMACY, KIND_CLINIC, KIND_HOSPITAL))
            drug = (
                int(self._choice(imported_drugs)) if mode == "bad_check" else self._pharmacy_drug()
            )
            p = self.patient(region=int(self.inst.region[where]), drugs=(drug,))
            qty = int(cat.drug_pack[drug])
            if mode in ("null", "empty"):
                line = Line(IT_DRUG, drug, qty, nocode=NO_CODES if mode == "null" else EMPTY_CODES)
            elif mode == "bad_check":
                prods = np.flatnonzero((cat.prod_drug == drug) & cat.prod_imported)
                key = self.book.allocate_one(int(self._choice(prods)))
                lit = self.book.literal(self.book.bad_check_spelling(key, self.var()))
                line = Line(IT_DRUG, drug, qty, codes=[(-1, lit)])
            else:
                line = Line(IT_DRUG, drug, qty, codes=[(-1, self.book.literal(self._garbage()))])
            day = int(self.rng.integers(0, YEAR_DAYS))
            self.drug_visit(
                p,
                where,
                day,
                line,
                scenario=f"missing_code_{mode}",
                intended=("missing_trace_code",),
            )

    def _garbage(self) -> str:
        """A string that is neither a 20-digit code nor a GS1 element string."""

        def digits(n: int) -> str:
            return "".join(str(int(d)) for d in self.rng.integers(0, 10, n))

        def alnum(n: int) -> str:
            chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
            return "".join(chars[int(i)] for i in self.rng.integers(0, len(chars), n))

        forms: tuple[Callable[[], str], ...] = (
            lambda: "8" + digits(18),  # 19 digits
            lambda: "8" + digits(20),  # 21 digits
            lambda: "8" + digits(10) + "O" + digits(8),  # 20 characters, a letter O among them
            lambda: "(01)" + digits(13) + "(21)" + alnum(8),  # GTIN one digit short
            lambda: "(21)" + alnum(8) + "(17)271231",  # no GTIN
            lambda: "X" + alnum(11),
            lambda: "N/A",
        )
        return forms[int(self.rng.integers(len(forms)))]()

    def restrictions(self) -> None:
        """Gender and age violations on drugs and services."""
        cat = self.cat
        male, female = 1, 2
        gender_cases = (
            ("drug", "XG04CBF017", female, (20, 80)),
            ("drug", "XG04CAT018", female, (20, 80)),
            ("drug", "XG03DAH019", male, (20, 80)),
            ("drug", "XG03CAE020", male, (20, 80)),
            ("service", "270300001", male, (20, 80)),
            ("service", "250404001", female, (20, 80)),
        )
        age_cases = (
            ("drug", "XR05XAE015", None, (20, 70)),
            ("drug", "XR05CAF016", None, (20, 70)),
            ("drug", "XJ01MAL021", None, (3, 12)),
            ("drug", "XN05CFZ040", None, (3, 12)),
            ("service", "130400001", None, (20, 60)),
            ("service", "311201001", None, (18, 30)),
        )
        for pattern, cases in (
            ("gender_restriction", gender_cases),
            ("age_restriction", age_cases),
        ):
            for k in range(self.cfg.cases):
                kind, code, gender, age = cases[k % len(cases)]
                where = self.any_institution((KIND_HOSPITAL, KIND_CLINIC, KIND_PRIMARY))
                region = int(self.inst.region[where])
                if kind == "drug":
                    d = cat.drug(code)
                    p = self.patient(
                        region=region, gender=gender, age=age, drugs=(d,), eligible=False
                    )
                    line = self.pack_line(where, d)
                else:
                    v = cat.service(code)
                    p = self.patient(
                        region=region, gender=gender, age=age, services=(v,), eligible=False
                    )
                    line = Line(IT_SERVICE, v, 1)
                day = int(self.rng.integers(0, YEAR_DAYS))
                self.settle(
                    p,
                    where,
                    self.when(day, VT_OUT),
                    VT_OUT,
                    [line],
                    scenario=pattern,
                    intended=(pattern,),
                )

    def over_frequency(self) -> None:
        """糖化血红蛋白 billed again within 90 days."""
        hba = self.svc[SVC_HBA1C]
        for _ in range(self.cfg.cases):
            where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            p = self.patient(region=int(self.inst.region[where]), age=(40, 85), services=(hba,))
            day = int(self.rng.integers(0, YEAR_DAYS - 80))
            days = [day, day + int(self.rng.integers(20, 76))]
            if self.rng.random() < 0.3 and days[-1] + 40 < YEAR_DAYS:
                days.append(days[-1] + int(self.rng.integers(10, 41)))
            for j, d in enumerate(days):
                self.settle(
                    p,
                    where,
                    self.when(d, VT_OUT),
                    VT_OUT,
                    [Line(IT_SERVICE, hba, 1)],
                    scenario="hba1c_over_frequency",
                    intended=("over_frequency",) if j == 1 else (),
                    diag="E11.9",
                )

    def split_admissions(self) -> None:
        """分解住院: readmission to the same hospital within 15 days for the same ICD-10 category."""
        drugs = (self.cat.drug("XB05BBA037"), self.cat.drug("XJ01DDA036"))
        for _ in range(self.cfg.cases):
            where = self.any_institution((KIND_HOSPITAL,), min_level=2)
            p = self.patient(
                region=int(self.inst.region[where]), age=(45, 85), drugs=drugs, no_inpatient=True
            )
            dx = str(self._choice(["I63.9", "J18.9", "J44.1", "I25.1", "E11.9"]))
            los1, los2 = int(self.rng.integers(6, 13)), int(self.rng.integers(4, 11))
            admit1 = int(self.rng.integers(0, YEAR_DAYS - los1 - los2 - 20))
            admit2 = admit1 + los1 + int(self.rng.integers(1, 13))
            self.stay(p, where, admit1, los1, dx, scenario="split_admission", drugs=drugs)
            self.stay(
                p,
                where,
                admit2,
                los2,
                dx,
                scenario="split_admission",
                drugs=drugs,
                intended=("split_admission",),
            )

    def group_admissions(self) -> None:
        """结伴住院: 4-8 neighbours admitted together, >= 3 times, >= 30 days apart, thin diagnoses."""
        paracetamol = self.cat.drug("XN02BEA011")
        for g in range(self.cfg.group_admissions):
            gid = f"GRP-{g + 1:04d}"
            where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            while self.inst.level[where] != 1:
                where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            members = self._neighbours(
                int(self.inst.region[where]), int(self.rng.integers(4, 9)), (paracetamol,)
            )
            n_occ = int(self.rng.integers(3, 5))
            day = int(self.rng.integers(3, 60))
            occasions = []
            for _ in range(n_occ):
                if day + 6 >= YEAR_DAYS:
                    break
                occasions.append(day)
                day += int(self.rng.integers(31, 81))  # members' stays stay >= 30 days apart
            if len(occasions) < 3:
                occasions = [10, 80, 150][: max(3, len(occasions))]
            for occ in occasions:
                for p in members:
                    admit = occ + int(self.rng.integers(0, 2))
                    los = int(self.rng.integers(2, 5))
                    self.stay(
                        p,
                        where,
                        admit,
                        los,
                        str(self._choice(THIN_DX)),
                        scenario="group_admission",
                        drugs=(paracetamol,),
                    )
            for p in members:
                self.groups.append((gid, p, where))
            self.entities.append(
                EntityTruth(
                    "group",
                    gid,
                    "group_admission",
                    {
                        "scenario": "group_admission",
                        "size": len(members),
                        "occasions": len(occasions),
                        "institution": where,
                    },
                )
            )

    def _neighbours(self, region: int, size: int, drugs: tuple[int, ...]) -> list[int]:
        locs = self._region_localities[region]
        for _ in range(200):
            cands = self._by_locality[int(self._choice(locs))]
            if len(cands) < size * 3:
                continue
            try:
                return [
                    self.patient(
                        candidates=cands,
                        age=(18, 85),
                        drugs=drugs,
                        no_inpatient=True,
                        attempts=2000,
                    )
                    for _ in range(size)
                ]
            except SimulationError:
                continue
        msg = f"no locality in region {region} has {size} free neighbours"
        raise SimulationError(msg)

    def anomalous_settlements(self) -> None:
        """Outpatient bills with hugely inflated service quantities and prices; no rule applies."""
        svcs = [self.cat.service(c) for c in INFLATABLE_SERVICES]
        for _ in range(self.cfg.cases):
            where = self.any_institution((KIND_HOSPITAL, KIND_CLINIC, KIND_PRIMARY))
            p = self.patient(region=int(self.inst.region[where]))
            lines = [
                Line(
                    IT_SERVICE,
                    int(v),
                    int(self.rng.integers(20, 61)),
                    price_permille=int(self.rng.integers(2500, 4001)),
                )
                for v in self.rng.choice(svcs, int(self.rng.integers(1, 4)), replace=False)
            ]
            day = int(self.rng.integers(0, YEAR_DAYS))
            sid = self.settle(
                p, where, self.when(day, VT_OUT), VT_OUT, lines, scenario="anomalous_settlement"
            )
            self.entities.append(
                EntityTruth(
                    "settlement", sid, "anomalous_settlement", {"scenario": "inflated_services"}
                )
            )

    def anomalous_institutions(self) -> None:
        for i in np.flatnonzero(self.inst.anomalous):
            self.entities.append(
                EntityTruth(
                    "institution",
                    int(i),
                    "anomalous_institution",
                    {
                        "scenario": "anomalous_institution",
                        "high_value_drug_share": 0.4,
                        "night_share": 0.4,
                        "far_patient_share": 0.6,
                        "price_level": "top of range",
                    },
                )
            )

    # ================================================================ benign
    def benign_lookalikes(self) -> None:
        cat = self.cat
        n = self.cfg.benign
        splittable = np.flatnonzero(
            cat.drug_split_ok & ~cat.drug_high_value & (cat.drug_gender == 0)
        )
        for _ in range(n):  # split sales that use up the pack exactly
            ph = self.any_institution((KIND_PHARMACY,))
            drug = int(self._choice(splittable))
            pack = int(cat.drug_pack[drug])
            u1 = max(1, pack // 2 - int(self.rng.integers(0, max(1, pack // 4))))
            parts = [u1, pack - u1]
            key = self.fresh(ph, drug)
            day = int(self.rng.integers(5, YEAR_DAYS - 30))
            sid = -1
            for units in parts:
                p = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
                day += int(self.rng.integers(1, 10))
                line = Line(IT_DRUG, drug, units, split=True, codes=[(key, self.var())])
                sid = self.drug_visit(
                    p, ph, day, line, scenario="benign_split_exact", origin=ORIGIN_BENIGN
                )
            self.benign.append(
                BenignTruth("settlement", sid, "split_exact_pack", "split_sale_overrun")
            )

        for _ in range(n):  # a pack sold again after its first sale was reversed
            ph = self.any_institution((KIND_PHARMACY,))
            drug = self._pharmacy_drug()
            key = self.fresh(ph, drug)
            day = int(self.rng.integers(5, YEAR_DAYS - 20))
            t1 = self.when(day, VT_PHARM)
            rev = t1 + int(self.rng.integers(2 * HOUR, 48 * HOUR))
            t2 = rev + int(self.rng.integers(2 * HOUR, 10 * DAY))
            qty = int(cat.drug_pack[drug])
            a = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
            b = self.patient(region=int(self.inst.region[ph]), drugs=(drug,))
            v = self.var()
            self.settle(
                a,
                ph,
                t1,
                VT_PHARM,
                [Line(IT_DRUG, drug, qty, codes=[(key, v)])],
                scenario="benign_reversed_sale",
                origin=ORIGIN_BENIGN,
                rev_t=rev,
            )
            sid = self.settle(
                b,
                ph,
                t2,
                VT_PHARM,
                [Line(IT_DRUG, drug, qty, codes=[(key, self.other_var(v))])],
                scenario="benign_resale_after_reversal",
                origin=ORIGIN_BENIGN,
            )
            self.benign.append(
                BenignTruth("settlement", sid, "resale_after_reversal", "duplicate_trace_code")
            )

        paracetamol = cat.drug("XN02BEA011")
        for f in range(n):  # a family admitted together once
            fid = f"FAM-{f + 1:04d}"
            where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            while self.inst.level[where] != 1:
                where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            members = self._neighbours(int(self.inst.region[where]), 3, (paracetamol,))
            day = int(self.rng.integers(0, YEAR_DAYS - 10))
            for p in members:
                self.stay(
                    p, where, day + int(self.rng.integers(0, 2)), int(self.rng.integers(2, 5)), "J06.9",
                    scenario="benign_family_admission", drugs=(paracetamol,), origin=ORIGIN_BENIGN,
                )  # fmt: skip
                self.benign_groups.append((fid, p, where))
            self.benign.append(BenignTruth("group", fid, "family_admission", "group_admission"))

        for i in np.flatnonzero(self.inst.volume_outlier):
            self.benign.append(
                BenignTruth("institution", int(i), "volume_outlier", "anomalous_institution")
            )

        drugs = (cat.drug("XB05BBA037"),)
        for kind in ("readmission_after_30_days", "readmission_other_diagnosis"):
            for _ in range(n):
                where = self.any_institution((KIND_HOSPITAL,), min_level=2)
                p = self.patient(
                    region=int(self.inst.region[where]),
                    age=(45, 85),
                    drugs=drugs,
                    no_inpatient=True,
                )
                dx1 = str(self._choice(["I63.9", "J18.9", "J44.1", "I25.1"]))
                los1, los2 = int(self.rng.integers(5, 11)), int(self.rng.integers(4, 9))
                if kind == "readmission_after_30_days":
                    gap, dx2 = int(self.rng.integers(31, 61)), dx1
                else:
                    gap = int(self.rng.integers(2, 15))
                    dx2 = str(
                        self._choice(
                            [d for d in ("K80.2", "N39.0", "I10", "S72.0") if d[:3] != dx1[:3]]
                        )
                    )
                admit1 = int(self.rng.integers(0, YEAR_DAYS - los1 - gap - los2 - 1))
                self.stay(
                    p,
                    where,
                    admit1,
                    los1,
                    dx1,
                    scenario=f"benign_{kind}",
                    drugs=drugs,
                    origin=ORIGIN_BENIGN,
                )
                sid = self.stay(
                    p,
                    where,
                    admit1 + los1 + gap,
                    los2,
                    dx2,
                    scenario=f"benign_{kind}",
                    drugs=drugs,
                    origin=ORIGIN_BENIGN,
                )
                self.benign.append(BenignTruth("settlement", sid, kind, "split_admission"))

        hba = self.svc[SVC_HBA1C]
        for _ in range(n):  # HbA1c exactly 91 days apart
            where = self.any_institution((KIND_HOSPITAL, KIND_PRIMARY))
            p = self.patient(region=int(self.inst.region[where]), age=(40, 85), services=(hba,))
            day = int(self.rng.integers(0, YEAR_DAYS - 92))
            for d in (day, day + 91):
                sid = self.settle(
                    p, where, self.when(d, VT_OUT), VT_OUT, [Line(IT_SERVICE, hba, 1)],
                    scenario="benign_hba1c_91_days", origin=ORIGIN_BENIGN, diag="E11.9",
                )  # fmt: skip
            self.benign.append(BenignTruth("settlement", sid, "hba1c_91_days", "over_frequency"))

    # ================================================================ result
    def plant_all(self) -> Planted:
        self.rings()
        self.fake_sales()
        self.split_overruns()
        self.substitutions()
        self.missing_codes()
        self.restrictions()
        self.over_frequency()
        self.split_admissions()
        self.group_admissions()
        self.anomalous_settlements()
        self.anomalous_institutions()
        self.benign_lookalikes()
        return self.result()

    def result(self) -> Planted:
        cols = (
            "sid",
            "patient",
            "inst",
            "doctor",
            "t",
            "vtype",
            "admit",
            "discharge",
            "diag",
            "origin",
            "rev_t",
        )
        s = pd.DataFrame(self.s_rows, columns=list(cols)).astype(
            dict.fromkeys(cols, np.int64) | {"vtype": np.int8, "origin": np.int8}
        )
        keys: list[int] = []
        varz: list[int] = []
        rows = []
        for sid, ln in self.l_rows:
            rows.append(
                (
                    sid,
                    ln.itype,
                    ln.item,
                    ln.qty,
                    ln.split,
                    len(keys),
                    len(ln.codes),
                    ln.nocode,
                    ln.price_permille,
                )
            )
            for k, v in ln.codes:
                keys.append(k)
                varz.append(v)
        lines = pd.DataFrame(
            rows,
            columns=[
                "sid",
                "itype",
                "item",
                "qty",
                "split",
                "cstart",
                "ncodes",
                "nocode",
                "permille",
            ],
        )
        dtypes = {"sid": np.int64, "itype": np.int8, "item": np.int64, "qty": np.int64, "split": bool,
                  "cstart": np.int64, "ncodes": np.int64, "nocode": np.int8}  # fmt: skip
        lines = lines.astype(dtypes)
        inst_of = (
            pd.Series(s["inst"].to_numpy(), index=s["sid"].to_numpy())
            .reindex(lines["sid"].to_numpy())
            .to_numpy()
        )
        base = unit_prices(
            self.cat, self.inst, inst_of, lines["itype"].to_numpy(), lines["item"].to_numpy()
        )
        lines["price"] = (base * lines["permille"].to_numpy() + 500) // 1000
        lines = lines.drop(columns="permille")
        events = pd.DataFrame(self.events, columns=["key", "inst", "kind", "t"]).astype(np.int64)
        return Planted(
            claims=Claims(
                s=s, l=lines, code_key=np.array(keys, np.int64), code_var=np.array(varz, np.int64)
            ),
            explicit_events=events,
            no_auto=np.array(sorted(self.no_auto), np.int64),
            intended=self.intended,
            scenario=self.scenario,
            entities=self.entities,
            benign=self.benign,
            groups=self.groups,
            benign_groups=self.benign_groups,
        )


__all__ = ["BenignTruth", "EntityTruth", "Line", "Planted", "Planter", "SimulationError"]
