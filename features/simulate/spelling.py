"""Pack identities and how they are spelled (the simulator writes codes; it never parses them).

A pack is an int64 key: ``product << 32 | counter``. A domestic product's pack is
the 20-digit 码上放心 code ``product code (7) + serial (9) + check (4)``, the check
digits derived from a hash (their real algorithm is not public). An imported
product's pack is a GS1 element string with GTIN-14 (valid check digit) and an
alphanumeric serial of 6-12 characters, spelled in one of several forms:
parenthesised HRI or raw with a GS (0x1D) after variable-length fields, AIs in
varied orders, with or without expiry (17) and lot (10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.simulate.catalog import Catalog
from features.simulate.config import mix64

GS = "\x1d"
KEY_SHIFT = 32
INVALID = -1

# (form, AI order); form "hri" or "raw"
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hri", ("01", "21", "17", "10")),
    ("hri", ("01", "17", "10", "21")),
    ("hri", ("01", "21")),
    ("hri", ("01", "17", "21")),
    ("raw", ("01", "21", "17", "10")),
    ("raw", ("01", "17", "10", "21")),
    ("raw", ("01", "21")),
    ("raw", ("21", "01", "17")),
    ("hri", ("21", "01", "10")),
    ("raw", ("17", "01", "21", "10")),
)
N_VARIANTS = len(VARIANTS)
_FIXED = {"01", "17"}
_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


_B36_BYTES = np.frombuffer(_B36.encode(), dtype=np.uint8)


def _base36(values: np.ndarray, width: int) -> np.ndarray:
    """Fixed-width upper-case base-36 spellings of non-negative integers (numpy str array)."""
    values = np.asarray(values, np.int64)
    digits = np.empty((len(values), width), np.uint8)
    rest = values.copy()
    for k in range(width - 1, -1, -1):
        digits[:, k] = _B36_BYTES[rest % 36]
        rest //= 36
    return np.ascontiguousarray(digits).view(f"S{width}").ravel().astype(f"U{width}")


def gs1_string(values: dict[str, str], form: str, order: tuple[str, ...]) -> str:
    """Spell AI values as HRI or raw (GS after each variable-length field but the last)."""
    present = [ai for ai in order if ai in values]
    if form == "hri":
        return "".join(f"({ai}){values[ai]}" for ai in present)
    parts = []
    for i, ai in enumerate(present):
        parts.append(ai + values[ai])
        if ai not in _FIXED and i < len(present) - 1:
            parts.append(GS)
    return "".join(parts)


@dataclass
class CodeBook:
    """Allocates fresh packs per product and spells them."""

    catalog: Catalog
    salt: int
    next_counter: np.ndarray = field(init=False)
    serial_base: np.ndarray = field(init=False)
    serial_len: np.ndarray = field(init=False)
    literals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.catalog.products)
        h = mix64(np.arange(n), self.salt)
        self.next_counter = np.zeros(n, np.int64)
        self.serial_base = (100_000_000 + (h % np.uint64(300_000_000))).astype(np.int64)
        self.serial_len = (6 + (h >> np.uint64(40)) % np.uint64(7)).astype(np.int64)
        codes = self.catalog.products["product_code"].to_numpy()
        self._code7 = pa.array(np.where(self.catalog.prod_imported, "", codes).astype(str))
        self._gtin = codes

    # ------------------------------------------------------------ allocation
    def allocate(self, products: np.ndarray) -> np.ndarray:
        """Fresh pack keys, one per entry of `products`, in the given order."""
        products = np.asarray(products, np.int64)
        if len(products) == 0:
            return np.zeros(0, np.int64)
        order = np.argsort(products, kind="stable")
        sp = products[order]
        starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        counts = np.diff(np.r_[starts, len(sp)])
        rank = np.arange(len(sp)) - np.repeat(starts, counts)
        counters = np.empty(len(sp), np.int64)
        counters[order] = self.next_counter[sp] + rank
        uniq = sp[starts]
        self.next_counter[uniq] += counts
        return (products << KEY_SHIFT) | counters

    def allocate_one(self, product: int) -> int:
        return int(self.allocate(np.array([product]))[0])

    def literal(self, text: str) -> int:
        """Register an invalid spelling; returns its index (stored as the variant of key -1)."""
        self.literals.append(text)
        return len(self.literals) - 1

    # ------------------------------------------------------------ spelling
    @staticmethod
    def product_of(keys: np.ndarray) -> np.ndarray:
        return np.asarray(keys, np.int64) >> KEY_SHIFT

    def _gs1_values(self, keys: np.ndarray) -> dict[str, pa.Array]:
        """AI values (01, 21, 17, 10) of imported packs, vectorised."""
        keys = np.asarray(keys, np.int64)
        p = keys >> KEY_SHIFT
        counter = keys & 0xFFFFFFFF
        base = self.serial_base[p]
        width = self.serial_len[p] - 1
        serial = np.empty(len(keys), dtype=object)
        for w in np.unique(width):
            m = width == w
            letters = np.array(list(_B36[10:]), dtype="U1")[base[m] % 26]
            serial[m] = np.char.add(letters, _base36(base[m] + counter[m], int(w)))
        batch = counter // 400
        hb = mix64(p * 1_000_003 + batch, self.salt)
        yy = 26 + (hb % np.uint64(3)).astype(np.int64)
        mm = 1 + ((hb >> np.uint64(8)) % np.uint64(12)).astype(np.int64)
        dd = 1 + ((hb >> np.uint64(16)) % np.uint64(28)).astype(np.int64)
        lot = np.char.add("B", _base36(base // 7 + batch, 5))
        return {
            "01": pa.array(self._gtin[p].astype(str)),
            "21": pa.array(serial.astype(str)),
            "17": pa.array(yy * 10_000 + mm * 100 + dd).cast(pa.string()),
            "10": pa.array(lot),
        }

    def _gs1_spell(self, keys: np.ndarray, variants: np.ndarray) -> np.ndarray:
        values = self._gs1_values(keys)
        out = np.empty(len(keys), dtype=object)
        variants = np.asarray(variants, np.int64) % N_VARIANTS
        for v in np.unique(variants):
            m = variants == v
            sel = pa.array(m)
            form, order = VARIANTS[int(v)]
            parts: list[pa.Array | pa.Scalar] = []
            for i, ai in enumerate(order):
                parts.append(pa.scalar(f"({ai})" if form == "hri" else ai))
                parts.append(values[ai].filter(sel))
                if form == "raw" and ai not in _FIXED and i < len(order) - 1:
                    parts.append(pa.scalar(GS))
            out[m] = pc.binary_join_element_wise(*parts, "").to_numpy(zero_copy_only=False)
        return out

    def canonical_one(self, key: int) -> str:
        return str(self.canonical(np.array([key])).to_pylist()[0])

    def bad_check_spelling(self, key: int, variant: int) -> str:
        """The GS1 spelling of an imported pack with its GTIN check digit altered."""
        values = {ai: str(arr[0]) for ai, arr in self._gs1_values(np.array([key])).items()}
        gtin = values["01"]
        values["01"] = gtin[:13] + str((int(gtin[13]) + 1 + key % 9) % 10)
        form, order = VARIANTS[variant % N_VARIANTS]
        return gs1_string(values, form, order)

    def spell(self, keys: np.ndarray, variants: np.ndarray) -> pa.Array:
        """String array of the spelled codes (key -1: the literal with index `variant`)."""
        keys = np.asarray(keys, np.int64)
        variants = np.asarray(variants, np.int64)
        n = len(keys)
        out = np.empty(n, dtype=object)
        invalid = keys < 0
        if invalid.any():
            out[invalid] = [self.literals[v] for v in variants[invalid]]
        valid_keys = np.where(invalid, 0, keys)
        prod = valid_keys >> KEY_SHIFT
        imported = self.catalog.prod_imported[prod] & ~invalid
        domestic = ~imported & ~invalid
        if domestic.any():
            dk = valid_keys[domestic]
            dp = dk >> KEY_SHIFT
            serial = self.serial_base[dp] + (dk & 0xFFFFFFFF)
            code7 = self._code7.take(pa.array(dp))
            code7_int = pc.cast(code7, pa.int64()).to_numpy()
            check = (
                mix64(code7_int * 1_000_000_000 + serial, self.salt) % np.uint64(10_000)
            ).astype(np.int64)
            tail = pc.utf8_lpad(pa.array(serial * 10_000 + check).cast(pa.string()), 13, "0")
            out[domestic] = pc.binary_join_element_wise(code7, tail, "").to_numpy(
                zero_copy_only=False
            )
        if imported.any():
            out[imported] = self._gs1_spell(keys[imported], variants[imported])
        return pa.array(out, type=pa.string())

    def canonical(self, keys: np.ndarray) -> pa.Array:
        """Canonical strings of valid keys (20-digit code, or "01"+GTIN+"21"+serial)."""
        keys = np.asarray(keys, np.int64)
        out = (
            self.spell(keys, np.zeros(len(keys), np.int64))
            .to_numpy(zero_copy_only=False)
            .astype(object)
        )
        imported = self.catalog.prod_imported[keys >> KEY_SHIFT]
        if imported.any():
            values = self._gs1_values(keys[imported])
            joined = pc.binary_join_element_wise(
                pa.scalar("01"), values["01"], pa.scalar("21"), values["21"], ""
            )
            out[imported] = joined.to_numpy(zero_copy_only=False)
        return pa.array(out, type=pa.string())
