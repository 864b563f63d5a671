"""The inspectors' web pages (稽核工作台), server-rendered under ``/ui``.

Every page is a thin shell around the case service (``serve.cases``) and the credit
accounts (``serve.credit``): the queue is ``cases.queue``, the case page
``cases.case_detail`` with the institution's ``credit.explain``, the buttons
``cases.set_status``, ``assign``, ``add_note`` and ``record_verdict``. Signing in makes a
server-side session (``serve.web.accounts``); its user is the caller the service checks
regions against, and its username the actor of the case events.

- Pages run as plain ``def`` handlers (FastAPI's thread pool): a case page reads several
  tables and draws its pictures, which must not hold the event loop the scorer answers on.
- Every POST carries the session's CSRF token (a hidden ``csrf_token`` field, or the
  ``X-CSRF-Token`` header htmx sends from the body's ``hx-headers``); without it, 403.
  The sign-in form, before there is a session, carries a token doubled in a cookie.
- Patient identifiers are masked on every page (``serve.web.words.mask_id``) unless the
  inspector clicks 显示 on a case: that is logged as a ``reveal`` case event and holds for
  that case for the rest of the session.
- Another region's case is the same 404 page as a case that does not exist. Bad input
  re-renders the form with the field named in Chinese.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Annotated, Any, Final
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import Connection, select

from rules.credit import Party
from serve import cases
from serve import credit as credit_accounts
from serve.keys import Role
from serve.schemas import (
    SHANGHAI,
    AssignIn,
    CaseDetailOut,
    CaseStatus,
    CreditOut,
    NoteIn,
    StatusIn,
    VerdictIn,
)
from serve.settings import Settings
from serve.tables import institutions, users
from serve.web import accounts, words

COOKIE: Final = "fundguard_session"
LOGIN_COOKIE: Final = "fundguard_login"
PAGE_SIZE: Final = 25
TEMPLATES: Final = resources.files("serve.web") / "templates"
STATIC: Final = resources.files("serve.web") / "static"


class PageError(Exception):
    """A page that cannot be shown: rendered as the error page with its status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class SignInNeeded(Exception):
    """No live session: to the sign-in page (htmx: ``HX-Redirect``)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _local(path: str | None) -> str:
    """``path`` if it is a page of ours, else the queue (no open redirect)."""
    if path and path.startswith("/ui/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui/cases"


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M")


def _day(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d")


def _field_errors(exc: ValidationError) -> list[str]:
    """A validation error's problems, each naming its field in Chinese."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        kind, message = error["type"], str(error["msg"])
        if not field and "note" in message:
            field, reason = "note", "排除案件必须写明原因"
        elif kind in ("missing", "string_too_short"):
            reason = "必须填写"
        elif kind == "string_too_long":
            reason = f"太长（最多 {error.get('ctx', {}).get('max_length', '?')} 字）"
        elif kind == "enum":
            reason = "取值不在可选范围内"
        else:
            reason = message
        problems.append(f"{words.FIELD_NAMES.get(field, field)}：{reason}")
    return problems


def signed_in(request: Request) -> accounts.Session:
    session = accounts.session_of(request.app.state.engine, request.cookies.get(COOKIE))
    if session is None:
        path = request.url.path
        query = request.url.query
        raise SignInNeeded(path + (f"?{query}" if query and request.method == "GET" else ""))
    return session


SignedIn = Annotated[accounts.Session, Depends(signed_in)]


def checked(
    session: SignedIn,
    csrf_token: Annotated[str, Form()] = "",
    x_csrf_token: Annotated[str, Header()] = "",
) -> accounts.Session:
    given = x_csrf_token or csrf_token
    if not given or not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
        raise PageError(403, "表单已失效", "表单令牌缺失或无效（CSRF），请刷新页面后重试。")
    return session


Checked = Annotated[accounts.Session, Depends(checked)]


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the pages under ``/ui`` (and their static files) from ``app``."""
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.globals.update(
        PATTERN_NAMES=words.PATTERN_NAMES,
        STATUS_NAMES=words.STATUS_NAMES,
        ENTITY_NAMES=words.ENTITY_NAMES,
        ACTION_NAMES=words.ACTION_NAMES,
        SOURCE_NAMES=words.SOURCE_NAMES,
        EVENT_NAMES=words.EVENT_NAMES,
        STEP_NAMES=words.STEP_NAMES,
        KIND_NAMES=words.KIND_NAMES,
        VISIT_NAMES=words.VISIT_NAMES,
        FEATURE_NAMES=words.FEATURE_NAMES,
    )
    env.filters.update(
        yuan=words.yuan,
        when=_when,
        day=_day,
        pattern_name=words.pattern_name,
        event_words=words.event_words,
    )

    def render(
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        session: accounts.Session | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        context = {"session": session, "csrf": session.csrf_token if session else "", **context}
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)  # noqa: S101 - registered for PageError only
        token = request.cookies.get(COOKIE)
        session = accounts.session_of(request.app.state.engine, token)
        context = {"title": exc.title, "message": exc.message}
        return render(request, "error.html", context, session=session, status_code=exc.status)

    async def sign_in_needed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInNeeded)  # noqa: S101 - registered for SignInNeeded only
        target = "/ui/login?" + urlencode({"next": exc.next_path})
        if request.headers.get("HX-Request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(SignInNeeded, sign_in_needed)

    router = APIRouter(prefix="/ui", include_in_schema=False)

    # --- signing in and out ----------------------------------------------------------------

    def login_page(
        request: Request, *, next_path: str, errors: list[str], username: str = "", status: int
    ) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = render(
            request,
            "login.html",
            {"next": next_path, "errors": errors, "username": username, "login_token": token},
            status_code=status,
        )
        response.set_cookie(
            LOGIN_COOKIE, token, max_age=1800, httponly=True, samesite="lax",
            secure=settings.environment == "production", path="/ui",
        )  # fmt: skip
        return response

    @router.get("", response_class=HTMLResponse)
    def home() -> Response:
        return RedirectResponse("/ui/cases", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/ui/cases") -> HTMLResponse:
        return login_page(request, next_path=_local(next), errors=[], status=200)

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        login_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/ui/cases",
    ) -> Response:
        next_path = _local(next)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not login_token or not hmac.compare_digest(login_token.encode(), expected.encode()):
            raise PageError(403, "表单已失效", "登录表单令牌缺失或无效（CSRF），请重新打开登录页。")
        errors = [
            f"{words.FIELD_NAMES[f]}：必须填写"
            for f, v in (("username", username), ("password", password))
            if not v.strip()
        ]
        token = None
        if not errors:
            token = accounts.sign_in(
                request.app.state.engine, username.strip(), password,
                minutes=settings.session_minutes,
            )  # fmt: skip
            if token is None:
                errors = ["用户名或密码错误，或账号已停用"]
        if token is None:
            return login_page(
                request, next_path=next_path, errors=errors, username=username, status=401
            )
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE, token, max_age=settings.session_minutes * 60, httponly=True,
            samesite="lax", secure=settings.environment == "production", path="/ui",
        )  # fmt: skip
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    @router.post("/logout")
    def logout(request: Request, _: Checked) -> Response:
        accounts.sign_out(request.app.state.engine, request.cookies.get(COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="lax")
        return response

    # --- the queue -------------------------------------------------------------------------

    def region_choices(conn: Connection, session: accounts.Session) -> list[str]:
        user = session.user
        if user.role is Role.ADMIN or not user.regions:
            found = conn.execute(select(institutions.c.region_code).distinct()).scalars()
            return sorted(str(r) for r in found)
        return sorted(user.regions)

    @router.get("/cases", response_class=HTMLResponse)
    def queue_page(
        request: Request,
        session: SignedIn,
        region: str = "",
        pattern: str = "",
        institution: str = "",
        min_amount_at_risk: str = "",
        status: str = "",
        page: str = "1",
    ) -> HTMLResponse:
        errors: list[str] = []
        region, pattern, institution = region.strip(), pattern.strip(), institution.strip()
        if region and not (len(region) == 6 and region.isdigit()):
            errors.append(f"{words.FIELD_NAMES['region']}：应为 6 位统筹区代码")
        if pattern and pattern not in words.PATTERN_NAMES:
            errors.append(f"{words.FIELD_NAMES['pattern']}：没有这种疑点类型")
        if len(institution) > 64:
            errors.append(f"{words.FIELD_NAMES['institution']}：太长（最多 64 字符）")
        minimum: Decimal | None = None
        if min_amount_at_risk.strip():
            try:
                minimum = Decimal(min_amount_at_risk.strip().replace(",", ""))
            except InvalidOperation:
                minimum = None
            if minimum is None or not minimum.is_finite() or minimum < 0:
                errors.append(f"{words.FIELD_NAMES['min_amount_at_risk']}：应为不小于 0 的金额")
                minimum = None
            elif minimum.as_tuple().exponent < -2:  # type: ignore[operator]
                errors.append(f"{words.FIELD_NAMES['min_amount_at_risk']}：最多两位小数")
                minimum = None
        chosen_status: CaseStatus | None = None
        if status:
            try:
                chosen_status = CaseStatus(status)
            except ValueError:
                errors.append(f"{words.FIELD_NAMES['status']}：取值不在可选范围内")
        try:
            number = int(page)
            if not 1 <= number <= 100_000:
                raise ValueError(page)
        except ValueError:
            errors.append(f"{words.FIELD_NAMES['page']}：应为正整数")
            number = 1
        user = session.user
        regions = None if user.role is Role.ADMIN or not user.regions else user.regions
        with request.app.state.engine.connect() as conn:
            found = []
            if not errors:
                found = cases.queue(
                    conn, regions=regions, status=chosen_status, region=region or None,
                    pattern=pattern or None, institution=institution or None,
                    min_amount_at_risk=minimum, limit=PAGE_SIZE + 1,
                    offset=(number - 1) * PAGE_SIZE,
                )  # fmt: skip
            choices = region_choices(conn, session)
        filters = {
            "region": region,
            "pattern": pattern,
            "institution": institution,
            "min_amount_at_risk": min_amount_at_risk.strip(),
            "status": status,
        }
        kept = {k: v for k, v in filters.items() if v}
        context = {
            "cases": found[:PAGE_SIZE],
            "filters": filters,
            "errors": errors,
            "regions": choices,
            "page": number,
            "previous": "?" + urlencode(kept | {"page": number - 1}) if number > 1 else None,
            "next": "?" + urlencode(kept | {"page": number + 1})
            if len(found) > PAGE_SIZE
            else None,
            "show_entity": lambda c: (
                words.mask_id(c.entity_id)
                if c.entity_type == "patient" and c.case_id not in session.revealed
                else c.entity_id
            ),
        }
        partial = request.headers.get("HX-Request") == "true" and not request.headers.get(
            "HX-Boosted"
        )
        return render(
            request,
            "queue_table.html" if partial else "queue.html",
            context,
            session=session,
            status_code=422 if errors else 200,
        )

    # --- one case --------------------------------------------------------------------------

    def institution_of(conn: Connection, detail: CaseDetailOut) -> str | None:
        if detail.entity_type == "institution":
            return detail.entity_id
        for flag in detail.flags:
            named = flag.evidence.get("institution_id")
            if isinstance(named, str) and named:
                return named
        if detail.entity_type == "settlement":
            found = cases.settlement_institutions(conn, [detail.entity_id])
            if detail.entity_id in found:
                return found[detail.entity_id]
        members = {m.institution_id for m in detail.members if m.institution_id}
        return members.pop() if len(members) == 1 else None

    def case_context(request: Request, session: accounts.Session, case_id: str) -> dict[str, Any]:
        engine = request.app.state.engine
        user = session.user
        try:
            with engine.connect() as conn:
                detail = cases.case_detail(
                    conn, case_id, visible=user.sees_region,
                    rulebase=request.app.state.rules.current(),
                )  # fmt: skip
                institution_id = institution_of(conn, detail)
                institution = None
                if institution_id:
                    institution = conn.execute(
                        select(institutions).where(institutions.c.institution_id == institution_id)
                    ).first()
                credit: CreditOut | None = None
                party = Party.INSTITUTION if institution_id else None
                account = institution_id
                if party is None and detail.entity_type == "patient":
                    party, account = Party.PATIENT, detail.entity_id
                if party is not None and account:
                    credit = credit_accounts.explain(
                        conn, request.app.state.credit, party, account, limit=5
                    )
                colleagues = [
                    (r.username, r.display_name)
                    for r in conn.execute(
                        select(
                            users.c.username, users.c.display_name, users.c.regions, users.c.role
                        )
                        .where(users.c.active.is_(True))
                        .order_by(users.c.username)
                    )
                    if r.role == Role.ADMIN.value or detail.region_code in json.loads(r.regions)
                ]
        except cases.UnknownCase:
            raise PageError(
                404, "案件不存在", f"没有案件 {case_id}，或它不在您有权查看的统筹区。"
            ) from None
        patients = {
            *([detail.entity_id] if detail.entity_type == "patient" else []),
            *(s.patient_id for code in detail.trace_codes for s in code.steps if s.patient_id),
            *(s.patient_id for s in detail.earlier_settlements),
            *(m.patient_id for m in detail.members),
        }
        for flag in detail.flags:
            patients |= words.patients_in(flag.evidence)
        revealed = case_id in session.revealed
        hide = words.masker(patients, reveal=revealed)
        from serve.web import pictures  # matplotlib: loaded by the first case page, not at start

        network = pictures.network_svg(detail, show_patient=hide)
        peers = pictures.peer_group_svg(detail)
        verdicts = [e for e in detail.events if e.kind == cases.EventKind.VERDICT.value]
        moved: list[str] = []
        if verdicts:
            moved = [str(c) for c in json.loads(verdicts[-1].detail).get("credit", ())]
        return {
            "case": detail,
            "hide": hide,
            "revealed": revealed,
            "has_patients": bool(patients),
            "institution": institution,
            "credit": credit,
            "credit_moved": moved,
            "network_svg": network,
            "peer_svg": peers,
            "colleagues": colleagues,
            "evidence_json": lambda evidence: hide(
                json.dumps(evidence, ensure_ascii=False, indent=1, sort_keys=True)
            ),
            "closed": detail.status.value in cases.CLOSED,
        }

    @router.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: str, session: SignedIn) -> HTMLResponse:
        return render(
            request, "case.html", case_context(request, session, case_id), session=session
        )

    @router.get("/cases/{case_id}/print", response_class=HTMLResponse)
    def case_print(request: Request, case_id: str, session: SignedIn) -> HTMLResponse:
        context = case_context(request, session, case_id)
        context["printed_at"] = datetime.now(UTC).astimezone(SHANGHAI)
        return render(request, "print.html", context, session=session)

    def after(
        request: Request,
        session: accounts.Session,
        case_id: str,
        step: Callable[[], object],
    ) -> Response:
        """Run a workflow step; back to the case page, or the page again with the error."""
        try:
            step()
        except ValidationError as exc:
            problems, status = _field_errors(exc), 422
        except cases.IllegalTransition as exc:
            problems, status = [f"当前状态不允许此操作：{exc}"], 409
        except cases.UnknownCase:
            raise PageError(
                404, "案件不存在", f"没有案件 {case_id}，或它不在您有权查看的统筹区。"
            ) from None
        else:
            return RedirectResponse(f"/ui/cases/{quote(case_id)}", status_code=303)
        context = case_context(request, session, case_id) | {"errors": problems}
        return render(request, "case.html", context, session=session, status_code=status)

    @router.post("/cases/{case_id}/take")
    def take(request: Request, case_id: str, session: Checked) -> Response:
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            cases.take(engine, case_id, actor=user.username, visible=user.sees_region)

        return after(request, session, case_id, step)

    @router.post("/cases/{case_id}/status")
    def move(
        request: Request,
        case_id: str,
        session: Checked,
        status: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            wanted = StatusIn.model_validate({"status": status, "reason": reason})
            cases.set_status(
                engine, case_id, CaseStatus(wanted.status.value), actor=user.username,
                visible=user.sees_region, reason=wanted.reason,
            )  # fmt: skip

        return after(request, session, case_id, step)

    @router.post("/cases/{case_id}/assign")
    def assign(
        request: Request,
        case_id: str,
        session: Checked,
        assignee: Annotated[str, Form()] = "",
    ) -> Response:
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            wanted = AssignIn.model_validate({"assignee": assignee.strip() or None})
            cases.assign(
                engine, case_id, wanted.assignee, actor=user.username, visible=user.sees_region
            )

        return after(request, session, case_id, step)

    @router.post("/cases/{case_id}/notes")
    def note(
        request: Request,
        case_id: str,
        session: Checked,
        note: Annotated[str, Form()] = "",
    ) -> Response:
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            wanted = NoteIn.model_validate({"note": note})
            cases.add_note(
                engine, case_id, wanted.note, actor=user.username, visible=user.sees_region
            )

        return after(request, session, case_id, step)

    @router.post("/cases/{case_id}/verdict")
    def verdict(
        request: Request,
        case_id: str,
        session: Checked,
        verdict: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> Response:
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            wanted = VerdictIn.model_validate({"verdict": verdict, "note": note})
            cases.record_verdict(
                engine, case_id, CaseStatus(wanted.verdict.value), wanted.note,
                actor=user.username, visible=user.sees_region,
                scheme=request.app.state.credit,
            )  # fmt: skip

        return after(request, session, case_id, step)

    @router.post("/cases/{case_id}/reveal")
    def reveal(request: Request, case_id: str, session: Checked) -> Response:
        """Show the case's patient identifiers for the rest of the session, logged on the
        case's trail (who, when) before anything is shown."""
        engine, user = request.app.state.engine, session.user

        def step() -> None:
            cases.record_reveal(  # 404 outside the regions
                engine, case_id, actor=user.username, visible=user.sees_region,
                detail={"user": user.username, "name": user.display_name, "what": "patient_ids"},
            )  # fmt: skip
            accounts.remember_reveal(engine, session, case_id)

        return after(request, session, case_id, step)

    @router.get("/{rest:path}", response_class=HTMLResponse)
    def not_found(rest: str) -> HTMLResponse:
        raise PageError(404, "页面不存在", f"没有页面 /ui/{rest}。")

    app.include_router(router)
