"""The internal, all-numeric claim tables shared by the generators, the audit and the writer.

Settlements (``s``), their lines (``l``) and the codes on the lines (two flat
arrays addressed by ``l.cstart`` / ``l.ncodes``) are kept as integers until the
writer spells them month by month.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

VT_OUT, VT_INP, VT_PHARM = 0, 1, 2
VISIT_TYPES = ("outpatient", "inpatient", "pharmacy")
IT_DRUG, IT_SERVICE, IT_MATERIAL = 0, 1, 2
ITEM_TYPES = ("drug", "service", "material")
ORIGIN_BACKGROUND, ORIGIN_PLANTED, ORIGIN_BENIGN = 0, 1, 2
EV_PURCHASE, EV_RETURN = 0, 1
EVENT_TYPES = ("purchase", "return")
NO_CODES, EMPTY_CODES = 0, 1
"""`l.nocode`: how a drug line without codes is written (null list or empty list)."""

S_COLUMNS = {
    "sid": np.int64,
    "patient": np.int64,
    "inst": np.int64,
    "doctor": np.int64,  # -1: none
    "t": np.int64,  # local seconds
    "vtype": np.int8,
    "admit": np.int64,  # local day, -1
    "discharge": np.int64,
    "diag": np.int64,  # index into the ICD-10 list, -1
    "origin": np.int8,
    "rev_t": np.int64,  # reversal time, -1
}
L_COLUMNS = {
    "sid": np.int64,
    "itype": np.int8,
    "item": np.int64,
    "qty": np.int64,
    "price": np.int64,  # cents per smallest unit / per time
    "split": bool,
    "cstart": np.int64,
    "ncodes": np.int64,
    "nocode": np.int8,
}


@dataclass
class Claims:
    s: pd.DataFrame
    l: pd.DataFrame  # noqa: E741
    code_key: np.ndarray
    code_var: np.ndarray

    @staticmethod
    def empty() -> Claims:
        return Claims(
            s=pd.DataFrame({c: np.zeros(0, d) for c, d in S_COLUMNS.items()}),
            l=pd.DataFrame({c: np.zeros(0, d) for c, d in L_COLUMNS.items()}),
            code_key=np.zeros(0, np.int64),
            code_var=np.zeros(0, np.int64),
        )

    def append(self, other: Claims) -> Claims:
        other_l = other.l.copy()
        other_l["cstart"] += len(self.code_key)
        return Claims(
            s=pd.concat([self.s, other.s], ignore_index=True),
            l=pd.concat([self.l, other_l], ignore_index=True),
            code_key=np.concatenate([self.code_key, other.code_key]),
            code_var=np.concatenate([self.code_var, other.code_var]),
        )

    def code_rows(self) -> pd.DataFrame:
        """One row per code on a line: line index, position and key/variant."""
        l = self.l  # noqa: E741
        n = l["ncodes"].to_numpy()
        line = np.repeat(np.arange(len(l)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        pos = np.arange(len(line)) - first
        idx = np.repeat(l["cstart"].to_numpy(), n) + pos
        return pd.DataFrame(
            {"line": line, "pos": pos, "key": self.code_key[idx], "var": self.code_var[idx]}
        )
