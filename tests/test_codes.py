"""Traceability codes: every spelling of a pack gives one canonical code."""

from __future__ import annotations

import itertools
import pickle
import string
from datetime import date

import pytest
from biip.checksums import gs1_standard_check_digit
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from traceability import codes
from traceability.codes import (
    GS,
    CodeForm,
    InvalidTraceCode,
    TraceCode,
    canonical_code,
    canonicalize_codes,
    gs1_hri,
    gs1_raw,
    parse_trace_code,
    try_parse_trace_code,
)

# GS1 AI (21) / (10) character set: CSET 82 (GS1 General Specifications 7.11).
CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
SYMBOLOGY_IDS = ("]d2", "]C1", "]Q3")

GTIN = "06901234567892"  # check digit 2
NMPA = "81234567012345678904"
EXAMPLE_HRI = "(01)06901234567892(21)A1B2C3(17)271231(10)L2301"
EXAMPLE_CANONICAL = "010690123456789221A1B2C3"


def _is_20_digits(text: str) -> bool:
    return len(text) == 20 and text.isascii() and text.isdigit()


# -- table: valid forms ---------------------------------------------------------

VALID = [
    # raw, canonical, form, product_code, serial, expiry, lot
    pytest.param(NMPA, NMPA, CodeForm.NMPA20, "8123456", "701234567", None, None, id="nmpa20"),
    pytest.param(
        f"  {NMPA}\r\n", NMPA, CodeForm.NMPA20, "8123456", "701234567", None, None, id="nmpa20-ws"
    ),
    pytest.param(
        f"]C0{NMPA}", NMPA, CodeForm.NMPA20, "8123456", "701234567", None, None, id="nmpa20-code128"
    ),
    pytest.param(
        f"]d2{NMPA}", NMPA, CodeForm.NMPA20, "8123456", "701234567", None, None, id="nmpa20-d2"
    ),
    pytest.param(
        EXAMPLE_HRI,
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        date(2027, 12, 31),
        "L2301",
        id="hri",
    ),
    pytest.param(
        " (01) 06901234567892 (21) A1B2C3 ",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="hri-spaced",
    ),
    pytest.param(
        "(10)L2301(17)271231(21)A1B2C3(01)06901234567892",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        date(2027, 12, 31),
        "L2301",
        id="hri-reordered",
    ),
    pytest.param(
        f"0106901234567892{'21A1B2C3'}{GS}17271231{'10L2301'}",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        date(2027, 12, 31),
        "L2301",
        id="raw",
    ),
    pytest.param(
        f"]d2{GS}17271231{'10L2301'}{GS}21A1B2C3{GS}0106901234567892",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        date(2027, 12, 31),
        "L2301",
        id="raw-d2-gs-reordered",
    ),
    pytest.param(
        f"]Q3010690123456789221A1B2C3{GS}",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="raw-q3-trailing-gs",
    ),
    pytest.param(
        f"]C1{GS}010690123456789221A1B2C3",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="raw-c1",
    ),
    pytest.param(
        EXAMPLE_CANONICAL,
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="canonical-is-raw",
    ),
    pytest.param(
        "(01)06901234567892(11)240101(21)A1B2C3(714)1234567",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="hri-other-ais-ignored",
    ),
    pytest.param(
        "(01)06901234567892(21)A1B2C3(17)270200",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        date(2027, 2, 28),
        None,
        id="expiry-day-00-is-month-end",
    ),
    pytest.param(
        "(01)06901234567892(21)A1B2C3(17)000000",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="expiry-not-a-date-is-dropped",
    ),
    pytest.param(
        "(01)06901234567892(21)A1B2C3(21)A1B2C3",
        EXAMPLE_CANONICAL,
        CodeForm.GS1,
        GTIN,
        "A1B2C3",
        None,
        None,
        id="repeated-ai-same-value",
    ),
    pytest.param(
        "0106901234567892" + "21a(b)c/",
        "010690123456789221a(b)c/",
        CodeForm.GS1,
        GTIN,
        "a(b)c/",
        None,
        None,
        id="raw-parenthesis-in-serial",
    ),
    pytest.param(
        "(01)00000000000000(21)X",
        "010000000000000021X",
        CodeForm.GS1,
        "00000000000000",
        "X",
        None,
        None,
        id="gtin-leading-zeros-kept",
    ),
]


@pytest.mark.parametrize(("raw", "canonical", "form", "product", "serial", "expiry", "lot"), VALID)
def test_valid_forms(
    raw: str,
    canonical: str,
    form: CodeForm,
    product: str,
    serial: str,
    expiry: date | None,
    lot: str | None,
) -> None:
    assert parse_trace_code(raw) == TraceCode(canonical, form, product, serial, expiry, lot)
    assert canonical_code(raw) == canonical
    assert try_parse_trace_code(raw) == parse_trace_code(raw)


# -- table: invalid reasons -----------------------------------------------------

INVALID = [
    pytest.param("", "empty code", id="empty"),
    pytest.param(" \t\n", "empty code", id="blank"),
    pytest.param(f"]d2{GS}", "empty code", id="only-envelope"),
    pytest.param("]", "unrecognised symbology identifier", id="bare-bracket"),
    pytest.param("]!0123", "unrecognised symbology identifier", id="bad-symbology"),
    pytest.param("8123456701234567890A", "20 characters but not all digits", id="20-not-digits"),
    pytest.param("8123456-012345678904", "20 characters but not all digits", id="20-dash"),
    pytest.param(
        "８１２３４５６７０１２３４５６７８９０４",
        "20 digits but not all ASCII digits (full-width?)",
        id="20-full-width",
    ),
    pytest.param(
        "8123456701234567890",
        "19 digits: neither a 20-digit code nor a GS1 element string",
        id="19-digits",
    ),
    pytest.param(
        "812345670123456789041",
        "21 digits: neither a 20-digit code nor a GS1 element string",
        id="21-digits",
    ),
    pytest.param(
        "8123 4567 0123 4567 8904",
        "neither a 20-digit code nor a GS1 element string",
        id="nmpa-spaced",
    ),
    pytest.param("hello", "neither a 20-digit code nor a GS1 element string", id="junk"),
    pytest.param(
        "(01)06901234567893(21)A1B2C3", "GTIN check digit is 3, expected 2", id="hri-check-digit"
    ),
    pytest.param(
        "010690123456789021A1B2C3", "GTIN check digit is 0, expected 2", id="raw-check-digit"
    ),
    pytest.param(
        "(01)06901234567892(17)271231(10)L1", "GS1 code without AI (21) serial", id="hri-no-21"
    ),
    pytest.param("010690123456789217271231", "GS1 code without AI (21) serial", id="raw-no-21"),
    pytest.param("(21)A1B2C3(17)271231", "GS1 code without AI (01) GTIN", id="hri-no-01"),
    pytest.param(
        f"21A1B2C3{GS}17271231", "GS1 element string without AI (01) GTIN", id="raw-no-01"
    ),
    pytest.param(
        "(01)06901234567892(21)A(21)B",
        "GS1 code with conflicting AI (21) values",
        id="conflicting-21",
    ),
    pytest.param(
        "(01)06901234567892(21)A(01)00000000000000",
        "GS1 code with conflicting AI (01) values",
        id="conflicting-01",
    ),
    pytest.param("(01)0690123456789(21)A", "malformed GS1 HRI", id="hri-gtin-13"),
    pytest.param("(01)06901234567892(99999)A", "malformed GS1 HRI", id="hri-unknown-ai"),
    pytest.param("(01)06901234567892(21)A(B", "malformed GS1 HRI", id="hri-parenthesis"),
    pytest.param("(01)06901234567892(x)(21)A", "malformed GS1 HRI", id="hri-junk"),
    pytest.param("(01)06901234567892(21)" + "A" * 21, "malformed GS1 HRI", id="hri-serial-21"),
    pytest.param("(01)06901234567892(21)A1B2C3(17)271332", "malformed GS1 HRI", id="hri-bad-month"),
]


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_invalid_reasons(raw: str, reason: str) -> None:
    with pytest.raises(InvalidTraceCode) as info:
        parse_trace_code(raw)
    assert info.value.reason.startswith(reason)
    assert info.value.raw == raw
    assert reason in str(info.value)
    result = try_parse_trace_code(raw)
    assert isinstance(result, InvalidTraceCode)
    assert result.reason == info.value.reason


def test_invalid_is_a_value_error_and_pickles() -> None:
    error = try_parse_trace_code("(01)06901234567893(21)X")
    assert isinstance(error, ValueError)
    assert isinstance(error, InvalidTraceCode)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own bytes
    assert (copy.raw, copy.reason, str(copy)) == (error.raw, error.reason, str(error))


def test_trace_code_is_frozen() -> None:
    code = parse_trace_code(NMPA)
    with pytest.raises(AttributeError):
        code.serial = "x"  # type: ignore[misc]
    assert hash(code) == hash(parse_trace_code(f" {NMPA} "))


# -- ambiguities, pinned ----------------------------------------------------------


def test_20_digit_gs1_lookalike_is_a_20_digit_code_with_the_same_canonical() -> None:
    raw = gs1_raw(GTIN, "12")  # 01 + GTIN + 21 + "12": 20 digits
    assert _is_20_digits(raw)
    for spelling in (raw, f"]d2{raw}", f"{GS}{raw}"):
        assert parse_trace_code(spelling).form is CodeForm.NMPA20
    hri = parse_trace_code(gs1_hri(GTIN, "12"))
    assert hri.form is CodeForm.GS1
    assert (hri.product_code, hri.serial) == (GTIN, "12")
    assert hri.canonical == parse_trace_code(raw).canonical == raw


def test_raw_without_gs_after_serial_runs_on() -> None:
    # Undetectable: the serial greedily takes what follows (biip, GS1 spec).
    code = parse_trace_code("0106901234567892" + "21ABC" + "17271231")
    assert code.serial == "ABC17271231"
    assert code.expiry is None


# -- spelling helpers -------------------------------------------------------------


def test_gs1_spellings() -> None:
    expiry = date(2027, 12, 31)
    assert gs1_hri(GTIN, "A1B2C3", expiry, "L2301") == EXAMPLE_HRI
    assert (
        gs1_raw(GTIN, "A1B2C3", expiry, "L2301")
        == f"0106901234567892{'21A1B2C3'}{GS}17271231{'10L2301'}"
    )
    assert (
        gs1_raw(GTIN, "A1B2C3", expiry, "L2301", order=("10", "21", "17", "01"))
        == f"10L2301{GS}21A1B2C3{GS}172712310106901234567892"
    )
    assert gs1_hri(GTIN, "S", order=("17", "21", "10", "01")) == "(21)S(01)06901234567892"
    # the check digit is not verified: invalid test data can be written
    assert gs1_hri("06901234567893", "S") == "(01)06901234567893(21)S"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gtin": "6901234567892", "serial": "S"}, "14 ASCII digits"),
        ({"gtin": GTIN, "serial": "S", "order": ("01",)}, "order"),
        ({"gtin": GTIN, "serial": "S", "order": ("01", "21", "21")}, "order"),
        ({"gtin": GTIN, "serial": "S", "lot": "L", "order": ("01", "21")}, "order"),
        ({"gtin": GTIN, "serial": "A" * 21}, "Failed to match"),
        ({"gtin": GTIN, "serial": "a b"}, "Failed to match"),
    ],
)
def test_gs1_spelling_rejects_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gs1_raw(**kwargs)  # type: ignore[arg-type]


def test_gs1_hri_refuses_parenthesis_in_a_value() -> None:
    with pytest.raises(ValueError, match="HRI"):
        gs1_hri(GTIN, "A(B")
    with pytest.raises(ValueError, match="HRI"):
        gs1_hri(GTIN, "AB", lot="L(1")
    assert canonical_code(gs1_raw(GTIN, "A(B", lot="L(1")) == f"01{GTIN}21A(B"


# -- batch ------------------------------------------------------------------------


def test_canonicalize_codes_batch() -> None:
    raws = [NMPA, EXAMPLE_HRI, NMPA, "bad", EXAMPLE_HRI, f" {NMPA}", gs1_raw(GTIN, "A1B2C3")]
    result = canonicalize_codes(raws)
    assert list(result) == [NMPA, EXAMPLE_HRI, "bad", f" {NMPA}", gs1_raw(GTIN, "A1B2C3")]
    assert result[NMPA] == result[f" {NMPA}"] == parse_trace_code(NMPA)
    assert result[EXAMPLE_HRI] == parse_trace_code(EXAMPLE_HRI)
    assert isinstance(result["bad"], InvalidTraceCode)
    canonical = {
        raw: value.canonical for raw, value in result.items() if isinstance(value, TraceCode)
    }
    assert canonical[EXAMPLE_HRI] == canonical[gs1_raw(GTIN, "A1B2C3")] == EXAMPLE_CANONICAL
    assert canonicalize_codes([]) == {}


def test_canonicalize_codes_parses_each_spelling_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = codes.try_parse_trace_code

    def counting(raw: str) -> TraceCode | InvalidTraceCode:
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(codes, "try_parse_trace_code", counting)
    raws = [EXAMPLE_HRI, "bad", EXAMPLE_HRI, "bad", NMPA, NMPA] * 3
    result = canonicalize_codes(raws)
    assert sorted(calls) == sorted([EXAMPLE_HRI, "bad"])  # the 20-digit code never gets here
    assert len(result) == 3


def test_20_digit_codes_never_reach_biip(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoBiip:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(name)

    monkeypatch.setattr(codes, "GS1Message", NoBiip())
    monkeypatch.setattr(codes, "SymbologyIdentifier", NoBiip())
    batch = [f"{i:020d}" for i in range(1000)]
    result = canonicalize_codes(batch)
    assert all(isinstance(v, TraceCode) and v.canonical == raw for raw, v in result.items())
    assert parse_trace_code(NMPA).canonical == NMPA
    with pytest.raises(AssertionError):  # the guard is live: a spelling off the fast path
        canonicalize_codes(["]d2" + EXAMPLE_HRI])


# -- properties -------------------------------------------------------------------


def _with_check_digit(body13: str) -> str:
    return body13 + str(gs1_standard_check_digit(body13))


gtins = st.text(string.digits, min_size=13, max_size=13).map(_with_check_digit)
serials = st.text(CSET82, min_size=1, max_size=20)
lots = st.text(CSET82, min_size=1, max_size=20)
# two-digit years stay in biip's century window (GS1 GenSpecs 7.12)
expiries = st.dates(min_value=date(2000, 1, 1), max_value=date(2049, 12, 31))
digits20 = st.text(string.digits, min_size=20, max_size=20)


def _spellings(gtin: str, serial: str, expiry: date | None, lot: str | None) -> list[str]:
    """Every spelling of one pack: HRI and raw, any AI order, with or without
    symbology id / leading GS / whitespace. Raw spellings that are 20 digits
    are left out (they read as 20-digit codes; see the pinned ambiguity)."""
    spellings: list[str] = []
    hri_ok = "(" not in serial and (lot is None or "(" not in lot)
    for ai_order in itertools.permutations(
        ["01", "21"] + (["17"] if expiry is not None else []) + (["10"] if lot is not None else [])
    ):
        hri = gs1_hri(gtin, serial, expiry, lot, ai_order) if hri_ok else None
        raw = gs1_raw(gtin, serial, expiry, lot, ai_order)
        for symbology_id in ("", *SYMBOLOGY_IDS):
            if hri is not None:
                spellings.append(symbology_id + hri)
            if not _is_20_digits(raw):
                spellings.append(symbology_id + raw)
                spellings.append(f" {symbology_id}{GS}{raw}\n")
    return spellings


@settings(deadline=None)
@given(
    gtin=gtins,
    serial=serials,
    expiry=st.none() | expiries,
    lot=st.none() | lots,
    keep_expiry=st.booleans(),
    keep_lot=st.booleans(),
)
def test_every_spelling_gives_one_canonical_code(
    gtin: str,
    serial: str,
    expiry: date | None,
    lot: str | None,
    keep_expiry: bool,
    keep_lot: bool,
) -> None:
    expected = f"01{gtin}21{serial}"
    spellings = _spellings(gtin, serial, expiry, lot)
    # the same pack without its expiry and/or lot is still the same code
    spellings += _spellings(
        gtin, serial, expiry if keep_expiry else None, lot if keep_lot else None
    )
    spellings += _spellings(gtin, serial, None, None)
    for spelling in spellings:
        code = parse_trace_code(spelling)
        assert code.canonical == expected, spelling
        assert (code.form, code.product_code, code.serial) == (CodeForm.GS1, gtin, serial)
        assert code.expiry in (None, expiry)
        assert code.lot in (None, lot)
    full = parse_trace_code(gs1_raw(gtin, serial, expiry, lot, codes.DEFAULT_AI_ORDER))
    assert (full.expiry, full.lot) == (expiry, lot)
    # the canonical string is itself a spelling of the same code
    assert canonical_code(expected) == expected


@given(
    gtin=gtins,
    wrong=st.integers(1, 9),
    serial=serials,
    expiry=st.none() | expiries,
    lot=st.none() | lots,
    ai_order=st.permutations(["01", "21", "17", "10"]),
    hri=st.booleans(),
    symbology_id=st.sampled_from(("", *SYMBOLOGY_IDS)),
)
def test_a_wrong_check_digit_is_always_invalid(
    gtin: str,
    wrong: int,
    serial: str,
    expiry: date | None,
    lot: str | None,
    ai_order: list[str],
    hri: bool,
    symbology_id: str,
) -> None:
    right = int(gtin[-1])
    bad_digit = (right + wrong) % 10
    bad_gtin = gtin[:-1] + str(bad_digit)
    if hri:
        assume("(" not in serial and (lot is None or "(" not in lot))
        spelling = gs1_hri(bad_gtin, serial, expiry, lot, ai_order)
    else:
        spelling = gs1_raw(bad_gtin, serial, expiry, lot, ai_order)
        assume(not _is_20_digits(spelling))
    result = try_parse_trace_code(symbology_id + spelling)
    assert isinstance(result, InvalidTraceCode)
    assert result.reason == f"GTIN check digit is {bad_digit}, expected {right}"


@given(code=digits20, symbology_id=st.sampled_from(("", "]C0", *SYMBOLOGY_IDS)))
def test_a_20_digit_code_is_its_own_canonical_form(code: str, symbology_id: str) -> None:
    for spelling in (code, f" {symbology_id}{code}\t", f"{GS}{code}"):
        parsed = parse_trace_code(spelling)
        assert parsed == TraceCode(code, CodeForm.NMPA20, code[:7], code[7:16], None, None)
    assert canonicalize_codes([code])[code] == parse_trace_code(code)


@given(
    first=st.tuples(gtins, serials),
    second=st.tuples(gtins, serials),
    hri=st.booleans(),
)
def test_different_gs1_packs_have_different_canonical_codes(
    first: tuple[str, str], second: tuple[str, str], hri: bool
) -> None:
    assume(first != second)
    spell = gs1_hri if hri else gs1_raw
    assume("(" not in first[1] + second[1] or not hri)
    assert canonical_code(spell(*first)) != canonical_code(spell(*second))


@given(first=digits20, second=digits20)
def test_different_20_digit_codes_have_different_canonical_codes(first: str, second: str) -> None:
    assume(first != second)
    assert canonical_code(first) != canonical_code(second)


@given(pack=st.tuples(gtins, serials), code=digits20)
def test_gs1_and_20_digit_canonicals_meet_only_in_the_lookalike(
    pack: tuple[str, str], code: str
) -> None:
    gtin, serial = pack
    spelling = gs1_raw(gtin, serial) if "(" in serial else gs1_hri(gtin, serial)
    gs1 = parse_trace_code(spelling)
    assert gs1.form is CodeForm.GS1
    lookalike = len(serial) == 2 and serial.isascii() and serial.isdigit()
    assert _is_20_digits(gs1.canonical) == lookalike
    if gs1.canonical == canonical_code(code):
        assert lookalike


def _slow(raw: str) -> TraceCode | InvalidTraceCode:
    """The whole way through biip, the fast path switched off."""
    fast = codes._fast_gs1
    codes._fast_gs1 = lambda raw: None  # type: ignore[assignment]
    try:
        return try_parse_trace_code(raw)
    finally:
        codes._fast_gs1 = fast


@settings(deadline=None)
@given(gtin=gtins, serial=serials, expiry=st.none() | expiries, lot=st.none() | lots)
def test_the_fast_path_agrees_with_biip_on_every_spelling_it_takes(
    gtin: str, serial: str, expiry: date | None, lot: str | None
) -> None:
    taken = 0
    for spelling in _spellings(gtin, serial, expiry, lot):
        fast = codes._fast_gs1(spelling)
        if fast is not None:
            taken += 1
            assert fast == _slow(spelling), spelling
    hri_ok = "(" not in serial and (lot is None or "(" not in lot)
    assert taken > 0 or not hri_ok, "the plain HRI spelling should take the fast path"


@settings(deadline=None, max_examples=500)
@given(
    text=st.text(alphabet="()0123456789\x1dABx-] ", min_size=1, max_size=60)
    | st.builds(
        lambda g, s, tail: f"(01){g}(21){s}{tail}",
        gtins | st.text(string.digits, min_size=14, max_size=14),
        serials,
        st.sampled_from(["", "(17)271231", "(17)271331", "(10)L1", "(21)X", "(99)1", "x"]),
    )
)
def test_the_fast_path_never_accepts_what_biip_refuses_or_reads_otherwise(text: str) -> None:
    fast = codes._fast_gs1(text)
    if fast is not None:
        assert fast == _slow(text)
