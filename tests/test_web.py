"""The inspectors' web pages (/ui): signing in and out, sessions that end, CSRF, masked
patient identifiers and the logged reveal, regions, the queue's filters and the workflow's
forms. Through Starlette's TestClient over the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import bearer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from features.flags import Flag, GroupMember
from features.tables import PATTERNS
from serve import cases
from serve.app import create_app
from serve.cli import main
from serve.keys import Role
from serve.settings import Settings
from serve.tables import case_events, institutions, labels, patients, user_sessions
from serve.web import accounts, words

REGION_A, REGION_B = "320102", "320205"
PATIENT = "P000004250"  # masked: P0****4250
MEMBERS = ("P000000163", "P000000318", PATIENT)
PASSWORD = "稽核-密码-2025"  # noqa: S105 - a test account's

CASE_INSTITUTION_A = cases.case_id_of("institution", "IA")
CASE_INSTITUTION_B = cases.case_id_of("institution", "IB")
CASE_PATIENT = cases.case_id_of("patient", PATIENT)
CASE_GROUP = cases.case_id_of("group", "G1")
CASE_SETTLEMENT = cases.case_id_of("settlement", "S1")


def _flags() -> tuple[list[Flag], list[GroupMember]]:
    flags = [
        Flag("institution", "IA", "anomalous_institution", 0.9, "review", Decimal("5000.00"),
             {"peer_group": "pharmacy|0|320102", "detector": "IForest", "score": 0.99,
              "threshold": 0.9, "top_features": [{"feature": "night_share", "value": 0.4,
                                                 "peer_median": 0.02, "z": 10.0}]}),
        Flag("institution", "IB", "resale_hub", 0.8, "review", Decimal("9000.00"), {"codes": []}),
        Flag("patient", PATIENT, "drug_hoarding", 0.7, "review", Decimal("800.00"),
             {"drug_code": "D1", "institutions": ["IA"], "packs": 19}),
        Flag("group", "G1", "group_admission", 0.6, "review", Decimal("300.00"),
             {"institution_id": "IA", "members": list(MEMBERS), "occasion_dates": []}),
        Flag("settlement", "S1", "duplicate_trace_code", 1.0, "reject", Decimal("48.00"),
             {"institution_id": "IA", "patient_id": PATIENT, "codes": [],
              "messages": [f"追溯码已被 {PATIENT} 结算"]}),
    ]  # fmt: skip
    members = [GroupMember("G1", p, "IA") for p in MEMBERS]
    return flags, members


@pytest.fixture
def world(store: Engine) -> Iterator[dict[str, Any]]:
    """Institution IA and patient P in region A, IB in region B; five cases (IA, IB, P,
    group G1 at IA, settlement S1 at IA); inspectors of A and B and an admin."""
    with store.begin() as conn:
        conn.execute(
            institutions.insert(),
            [
                {"institution_id": "IA", "name": "玄武区药店", "kind": "pharmacy", "level": 0,
                 "region_code": REGION_A},
                {"institution_id": "IB", "name": "锡山区药店", "kind": "pharmacy", "level": 0,
                 "region_code": REGION_B},
            ],
        )  # fmt: skip
        conn.execute(
            patients.insert(),
            [{"patient_id": p, "gender": "F", "birth_date": datetime(1960, 5, 1).date(),
              "region_code": REGION_A} for p in MEMBERS],
        )  # fmt: skip
        cases.file_screening(conn, *_flags())
    for username, role, regions in (
        ("wang", Role.INSPECTOR, (REGION_A,)),
        ("li", Role.INSPECTOR, (REGION_B,)),
        ("admin", Role.ADMIN, ()),
    ):
        accounts.create_user(
            store, username, PASSWORD, role=role, regions=regions, display_name=f"{username}稽核"
        )
    app = create_app(Settings(), engine=store)
    with TestClient(app) as client:
        yield {"client": client, "app": app}


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> Any:
    form = client.get("/ui/login")
    assert form.status_code == 200
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    return client.post(
        "/ui/login",
        data={"username": username, "password": password, "login_token": token.group(1),
              "next": "/ui/cases"},
        follow_redirects=False,
    )  # fmt: skip


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def events_of(store: Engine, case_id: str) -> list[Any]:
    with store.connect() as conn:
        return conn.execute(
            select(case_events).where(case_events.c.case_id == case_id)
            .order_by(case_events.c.event_id)
        ).all()  # fmt: skip


# --- signing in and out ---------------------------------------------------------------------


def test_sign_in_with_the_right_password_only(world: dict[str, Any], store: Engine) -> None:
    client = world["client"]
    first = client.get("/ui/cases", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/ui/login?next=")
    wrong = sign_in(client, "wang", "not-the-password")
    assert wrong.status_code == 401
    assert "用户名或密码错误" in wrong.text
    assert "fundguard_session" not in client.cookies
    assert sign_in(client, "nobody").status_code == 401  # an unknown name: the same answer
    no_token = client.post("/ui/login", data={"username": "wang", "password": PASSWORD})
    assert no_token.status_code == 403  # the sign-in form carries its own token
    empty = sign_in(client, "", "")
    assert empty.status_code == 401
    assert "用户名：必须填写" in empty.text
    right = sign_in(client, "wang")
    assert right.status_code == 303
    assert right.headers["location"] == "/ui/cases"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Max-Age=28800" in cookie  # session_minutes: 480
    page = client.get("/ui/cases")
    assert page.status_code == 200
    assert "医保智能监管 · 稽核工作台" in page.text
    assert "wang稽核" in page.text
    # a disabled account signs in no more, and its session ends at once
    assert accounts.disable_user(store, "wang")
    assert client.get("/ui/cases", follow_redirects=False).status_code == 303
    assert sign_in(client, "wang").status_code == 401


def test_a_session_ends_on_the_server_when_it_expires(world: dict[str, Any], store: Engine) -> None:
    client = world["client"]
    assert sign_in(client, "wang").status_code == 303
    assert client.get("/ui/cases").status_code == 200
    with store.begin() as conn:
        conn.execute(
            update(user_sessions).values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    gone = client.get("/ui/cases", follow_redirects=False)  # the browser still has the cookie
    assert gone.status_code == 303
    assert gone.headers["location"].startswith("/ui/login")
    htmx = client.get("/ui/cases", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.status_code == 401
    assert htmx.headers["HX-Redirect"].startswith("/ui/login")


def test_signing_out_ends_the_session_for_good(world: dict[str, Any], store: Engine) -> None:
    client = world["client"]
    assert sign_in(client, "wang").status_code == 303
    token = client.cookies["fundguard_session"]
    page = client.get("/ui/cases")
    out = client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)},
                      follow_redirects=False)  # fmt: skip
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/login"
    with store.connect() as conn:
        assert conn.execute(select(user_sessions)).all() == []
    client.cookies.set("fundguard_session", token, path="/ui")  # the old cookie, replayed
    assert client.get("/ui/cases", follow_redirects=False).status_code == 303


def test_a_post_without_the_session_token_is_refused(world: dict[str, Any], store: Engine) -> None:
    client = world["client"]
    sign_in(client, "wang")
    url = f"/ui/cases/{CASE_INSTITUTION_A}"
    token = csrf_of(client.get(url).text)
    before = len(events_of(store, CASE_INSTITUTION_A))
    wrong = token[:-1] + ("B" if token.endswith("A") else "A")  # one character off
    for data, headers in (
        ({"note": "无令牌"}, {}),
        ({"note": "错令牌", "csrf_token": "x" * 43}, {}),
        ({"note": "错令牌"}, {"X-CSRF-Token": wrong}),
    ):
        refused = client.post(f"{url}/notes", data=data, headers=headers)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    assert len(events_of(store, CASE_INSTITUTION_A)) == before  # nothing written
    for data, headers in (
        ({"note": "表单令牌", "csrf_token": token}, {}),
        ({"note": "htmx 请求头"}, {"X-CSRF-Token": token}),  # hx-headers on the body
    ):
        done = client.post(f"{url}/notes", data=data, headers=headers, follow_redirects=False)
        assert done.status_code == 303
    notes = [e.detail for e in events_of(store, CASE_INSTITUTION_A) if e.kind == "note"]
    assert len(notes) == 2
    assert all(e.actor == "wang" for e in events_of(store, CASE_INSTITUTION_A)[before:])
    assert client.post("/ui/logout", data={}).status_code == 403


# --- patient identifiers --------------------------------------------------------------------


def test_patient_ids_are_masked_until_revealed_and_the_reveal_is_logged(
    world: dict[str, Any], store: Engine
) -> None:
    client = world["client"]
    sign_in(client, "wang")
    masked = words.mask_id(PATIENT)
    assert masked == "P0****4250"
    queue = client.get("/ui/cases").text
    assert masked in queue
    assert PATIENT not in queue
    for case_id in (CASE_PATIENT, CASE_GROUP, CASE_SETTLEMENT):
        for path in (f"/ui/cases/{case_id}", f"/ui/cases/{case_id}/print"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert PATIENT not in page.text, path  # not in words, tables, evidence or SVG
            assert masked in page.text, path
    group = client.get(f"/ui/cases/{CASE_GROUP}").text
    assert all(member not in group for member in MEMBERS)
    assert "显示身份信息" in group
    revealed = client.post(
        f"/ui/cases/{CASE_GROUP}/reveal", data={"csrf_token": csrf_of(group)},
        follow_redirects=False,
    )  # fmt: skip
    assert revealed.status_code == 303
    [event] = [e for e in events_of(store, CASE_GROUP) if e.kind == "reveal"]
    assert event.actor == "wang"
    assert event.at is not None
    shown = client.get(f"/ui/cases/{CASE_GROUP}").text
    assert all(member in shown for member in MEMBERS)
    assert "查看身份信息" in shown  # the trail shows the reveal
    assert PATIENT not in client.get(f"/ui/cases/{CASE_SETTLEMENT}").text  # that case only
    # a new session masks again
    client.cookies.clear()
    sign_in(client, "wang")
    assert PATIENT not in client.get(f"/ui/cases/{CASE_GROUP}").text


@pytest.mark.parametrize(
    ("value", "masked"),
    [("310101199001011234", "31************1234"), ("P000004250", "P0****4250"),
     ("U12345", "U***45"), ("U1", "*1"), ("", "")],
)  # fmt: skip
def test_mask_id_keeps_the_first_two_and_last_four(value: str, masked: str) -> None:
    assert words.mask_id(value) == masked


def test_every_pattern_has_a_chinese_name() -> None:
    assert words.missing_names() == []
    assert all(PATTERNS)
    assert words.pattern_name("group_admission") == "结伴住院（低标准入院）"


# --- regions --------------------------------------------------------------------------------


def test_an_inspector_sees_only_the_cases_of_its_regions(
    world: dict[str, Any], store: Engine
) -> None:
    client = world["client"]
    sign_in(client, "wang")
    queue = client.get("/ui/cases").text
    assert CASE_INSTITUTION_A in queue
    assert CASE_INSTITUTION_B not in queue
    other = client.get(f"/ui/cases/{CASE_INSTITUTION_B}")
    assert other.status_code == 404
    assert "案件不存在" in other.text
    assert client.get(f"/ui/cases/{CASE_INSTITUTION_B}/print").status_code == 404
    assert client.get("/ui/cases/C-no-such-case").status_code == 404  # the same answer
    token = csrf_of(client.get(f"/ui/cases/{CASE_INSTITUTION_A}").text)
    for action, data in (("notes", {"note": "x"}), ("take", {}), ("reveal", {}),
                         ("verdict", {"verdict": "confirmed"})):  # fmt: skip
        post = client.post(
            f"/ui/cases/{CASE_INSTITUTION_B}/{action}", data=data | {"csrf_token": token}
        )
        assert post.status_code == 404, action
    assert [e.kind for e in events_of(store, CASE_INSTITUTION_B)] == ["filed"]
    assert client.get("/ui/cases", params={"region": REGION_B}).text.count("case-row") == 0
    api = client.get(f"/v1/cases/{CASE_INSTITUTION_B}",
                     headers=bearer(store, "inspector", REGION_A))  # fmt: skip
    assert api.status_code == 404
    client.cookies.clear()
    sign_in(client, "admin")
    assert client.get(f"/ui/cases/{CASE_INSTITUTION_B}").status_code == 200
    assert client.get("/ui/cases").text.count("case-row") == 5


# --- the queue ------------------------------------------------------------------------------


def _listed(client: TestClient, **params: str) -> list[str]:
    page = client.get("/ui/cases", params=params)
    assert page.status_code == 200, page.text
    return re.findall(r'data-case="([^"]+)"', page.text)


def test_the_queue_filters_pages_and_updates_by_htmx(world: dict[str, Any], store: Engine) -> None:
    client = world["client"]
    sign_in(client, "admin")
    everything = _listed(client)
    assert everything == [CASE_INSTITUTION_B, CASE_INSTITUTION_A, CASE_PATIENT, CASE_GROUP,
                          CASE_SETTLEMENT]  # fmt: skip  # highest expected loss first
    assert _listed(client, region=REGION_B) == [CASE_INSTITUTION_B]
    assert _listed(client, pattern="group_admission") == [CASE_GROUP]
    assert _listed(client, institution="IA") == [CASE_INSTITUTION_A, CASE_GROUP, CASE_SETTLEMENT]
    assert _listed(client, min_amount_at_risk="500") == [CASE_INSTITUTION_B, CASE_INSTITUTION_A,
                                                        CASE_PATIENT]  # fmt: skip
    assert _listed(client, institution="IA", min_amount_at_risk="100.5") == [
        CASE_INSTITUTION_A, CASE_GROUP]  # fmt: skip
    assert _listed(client, status="in_review") == []
    with pytest.raises(AssertionError):
        _listed(client, min_amount_at_risk="-1")
    for params, field in (
        ({"min_amount_at_risk": "十元"}, "最低涉及金额"),
        ({"min_amount_at_risk": "1.234"}, "最低涉及金额"),
        ({"region": "32"}, "统筹区"),
        ({"pattern": "nonsense"}, "疑点类型"),
        ({"status": "closed"}, "状态"),
        ({"page": "0"}, "页码"),
    ):
        bad = client.get("/ui/cases", params=params)
        assert bad.status_code == 422, params
        assert f"{field}：" in bad.text, params
    partial = client.get("/ui/cases", params={"region": REGION_A}, headers={"HX-Request": "true"})
    assert partial.status_code == 200
    assert partial.text.lstrip().startswith('<section id="queue">')  # the table alone
    assert "<html" not in partial.text
    # paging: 25 a page
    with store.begin() as conn:
        cases.file_screening(conn, [
            Flag("institution", f"IX{i:02d}", "resale_hub", 0.5, "review", Decimal(i), {})
            for i in range(30)
        ])  # fmt: skip
    first = client.get("/ui/cases")
    assert first.text.count("case-row") == 25
    assert "下一页" in first.text
    second = client.get("/ui/cases", params={"page": "2"})
    assert second.text.count("case-row") == 10
    assert "上一页" in second.text
    # the API's queue takes the same two new filters
    api = client.get("/v1/cases", params={"institution": "IA", "min_amount_at_risk": "100.5"},
                     headers=bearer(store, "admin"))  # fmt: skip
    assert [c["case_id"] for c in api.json()] == [CASE_INSTITUTION_A, CASE_GROUP]
    assert client.get("/v1/cases", params={"min_amount_at_risk": "-1"},
                      headers=bearer(store, "admin")).status_code == 422  # fmt: skip


# --- the workflow ---------------------------------------------------------------------------


def test_the_workflow_forms_and_a_verdict_that_moves_credit(
    world: dict[str, Any], store: Engine
) -> None:
    client = world["client"]
    sign_in(client, "wang")
    url = f"/ui/cases/{CASE_INSTITUTION_A}"
    page = client.get(url)
    assert '信用分 <strong id="credit-score">1000</strong>' in page.text
    token = csrf_of(page.text)
    assert client.post(f"{url}/take", data={"csrf_token": token}, follow_redirects=False
                       ).status_code == 303  # fmt: skip
    taken = client.get(url).text
    assert "核查中" in taken
    assert "退回" in taken
    again = client.post(f"{url}/take", data={"csrf_token": token})
    assert again.status_code == 409  # in review already: the page again, with why
    assert "当前状态不允许此操作" in again.text
    reason_missing = client.post(f"{url}/verdict", data={"csrf_token": token,
                                                         "verdict": "dismissed"})  # fmt: skip
    assert reason_missing.status_code == 422
    assert "说明：排除案件必须写明原因" in reason_missing.text
    no_verdict = client.post(f"{url}/verdict", data={"csrf_token": token, "verdict": "maybe"})
    assert no_verdict.status_code == 422
    assert "结论：" in no_verdict.text
    assert client.post(f"{url}/notes", data={"csrf_token": token, "note": " "}).status_code == 422
    assert client.post(f"{url}/assign", data={"csrf_token": token, "assignee": "li"},
                       follow_redirects=False).status_code == 303  # fmt: skip
    confirmed = client.post(f"{url}/verdict", data={"csrf_token": token, "verdict": "confirmed",
                                                    "note": "现场核实"})  # fmt: skip
    assert confirmed.status_code == 200  # followed to the case page
    score = re.search(r'id="credit-score">(\d+)<', confirmed.text)
    assert score is not None
    assert int(score.group(1)) < 1000  # the institution's credit moved
    assert 'id="credit-moved"' in confirmed.text
    assert "已确认违规" in confirmed.text
    assert 'id="verdict-form"' not in confirmed.text  # closed: reopen first
    with store.connect() as conn:
        assert conn.execute(select(labels.c.entity_id, labels.c.label)).all() == [("IA", 1)]
    kinds = [e.kind for e in events_of(store, CASE_INSTITUTION_A)]
    assert kinds == ["filed", "status_changed", "assigned", "assigned", "verdict"]
    reopened = client.post(f"{url}/status", data={"csrf_token": token, "status": "in_review",
                                                  "reason": "申诉"})  # fmt: skip
    assert reopened.status_code == 200
    assert "核查中" in reopened.text


def test_pages_that_do_not_exist_and_the_openapi_document(world: dict[str, Any]) -> None:
    client = world["client"]
    sign_in(client, "wang")
    missing = client.get("/ui/nothing-here")
    assert missing.status_code == 404
    assert "页面不存在" in missing.text
    htmx = client.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200
    assert htmx.text.startswith("var htmx=")
    assert client.get("/ui/static/style.css").status_code == 200
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
    assert client.get("/ui/login?next=https://evil.example/").text.count('value="/ui/cases"') == 1


def test_the_users_command_line(store_url: str, store: Engine) -> None:
    env = {"FUNDGUARD_DATABASE_URL": store_url}
    runner = CliRunner()
    made = runner.invoke(
        main, ["users", "create", "zhao", "--role", "inspector", "--region", REGION_A,
               "--name", "赵稽核", "--password-stdin"], input="长长的密码-123\n", env=env,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "inspector zhao (赵稽核) for 320102" in made.output
    prompted = runner.invoke(
        main, ["users", "create", "qian", "--role", "admin"],
        input="another-password\nanother-password\n", env=env,
    )  # fmt: skip
    assert prompted.exit_code == 0, prompted.output
    for args, words_ in (
        (["users", "create", "sun", "--role", "inspector", "--password-stdin"], "region"),
        (["users", "create", "zhao", "--role", "admin", "--password-stdin"], "taken"),
        (["users", "create", "x y", "--role", "admin", "--password-stdin"], "username"),
        (["users", "create", "zhou", "--role", "admin", "--password-stdin"], "password"),
    ):
        refused = runner.invoke(main, args, input="short\n" if "zhou" in args else
                                "long-enough-pw\n", env=env)  # fmt: skip
        assert refused.exit_code != 0, args
        assert words_ in refused.output, (args, refused.output)
    listed = runner.invoke(main, ["users", "list"], env=env)
    assert listed.exit_code == 0
    assert "zhao\tinspector\t320102\tactive\t赵稽核" in listed.output
    assert "qian\tadmin\t*\tactive" in listed.output
    assert accounts.sign_in(store, "zhao", "长长的密码-123", minutes=5) is not None
    disabled = runner.invoke(main, ["users", "disable", "zhao"], env=env)
    assert disabled.exit_code == 0, disabled.output
    assert runner.invoke(main, ["users", "disable", "zhao"], env=env).exit_code != 0
    assert "zhao\tinspector\t320102\tdisabled" in runner.invoke(main, ["users", "list"],
                                                               env=env).output  # fmt: skip
    assert accounts.sign_in(store, "zhao", "长长的密码-123", minutes=5) is None


def test_the_demo_inspector_signs_in_to_the_region_with_the_most_cases(
    world: dict[str, Any], store: Engine
) -> None:
    """``fundguard demo`` prints an inspector's account: it signs in and sees the busiest
    region's cases (four of the five are in region A), and a second one is a new account."""
    from serve.demo import demo_inspector

    username, password, region = demo_inspector(store)
    assert region == REGION_A
    client = world["client"]
    assert sign_in(client, username, password).status_code == 303
    page = client.get("/ui/cases")
    assert page.status_code == 200
    assert "IA" in page.text
    assert client.get(f"/ui/cases/{CASE_INSTITUTION_B}").status_code == 404
    again, other_password, _ = demo_inspector(store)
    assert again != username
    assert other_password != password
