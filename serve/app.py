"""The scorer: a FastAPI app over the store (CONTRACT.md §6).

``create_app(settings)`` builds it; its lifespan opens the store. Handlers are thin: they
validate, call the service function and answer. The work of one settlement is short (a
few queries in one transaction), so it runs inline in ``async def`` handlers: measured on
these machines a sync handler costs about four times the CPU (FLOORS.md).
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final

from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.constants import REF_PREFIX
from fastapi.openapi.models import OpenAPI
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from rules.credit import SHANGHAI, Party, load_scheme
from serve import audit, blacklist, cases, scoring
from serve import credit as credit_accounts
from serve.keys import Caller, KeyRing, Role
from serve.metrics import Metrics, RequestMetrics
from serve.model import ModelInForce
from serve.rulebase import RuleBaseInForce
from serve.schemas import (
    AssignIn,
    BlacklistIn,
    BlacklistOut,
    CaseDetailOut,
    CaseOut,
    CaseStatus,
    CreditOut,
    DecisionOut,
    ErrorOut,
    NoteIn,
    ReversalIn,
    ReversalOut,
    ScoreOut,
    SettlementIn,
    StatusIn,
    TraceEventIn,
    TraceEventsOut,
    VerdictIn,
)
from serve.settings import Settings
from serve.store import Checkpoints, create_store_engine
from serve.web import routes as web_pages
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events

JSON = "application/json"
log = logging.getLogger("fundguard.scorer")


class _ApiKey(HTTPBearer):
    """The caller of a request, by its key (``Authorization: Bearer <key>``), admitted when
    the key has one of ``roles`` (admin: every role).

    An ``HTTPBearer`` read and checked in one dependency (FastAPI solves one per request
    instead of the bearer and a checker over it); being a security scheme named
    ``HTTPBearer``, the OpenAPI document describes it as before."""

    def __init__(self, *roles: Role) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="HTTPBearer",
            description="an API key: `fundguard keys create`",
        )
        self.roles = roles
        self.allowed = ", ".join(r.value for r in roles)

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
        if not (scheme and key) or scheme.lower() != "bearer":
            raise HTTPException(
                status_code=401,
                detail="an API key is needed: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found: Caller | None = request.app.state.keys.caller(key)
        if found is None:
            raise HTTPException(
                status_code=401,
                detail="unknown or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if found.role is not Role.ADMIN and found.role not in self.roles:
            raise HTTPException(
                status_code=403,
                detail=f"a {found.role.value} key may not do this ({self.allowed} only)",
            )
        return found


def requires(*roles: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting callers whose key has one of ``roles`` (admin: every role)."""
    return _ApiKey(*roles)


SettlementSystem = Annotated[Caller, Depends(requires(Role.SETTLEMENT))]
Admin = Annotated[Caller, Depends(requires(Role.ADMIN))]
CreditReader = Annotated[Caller, Depends(requires(Role.SETTLEMENT, Role.INSPECTOR))]
"""Who may read credit: inspectors (and admins), and the settlement system, which needs an
institution's grade to decide on prepayment (预付) and a doctor's suspension to bill."""
Inspector = Annotated[Caller, Depends(requires(Role.INSPECTOR))]
"""Inspectors (and admins): cases, only of the regions of the key."""
DecisionReader = Annotated[Caller, Depends(requires(Role.SETTLEMENT, Role.INSPECTOR))]
"""Who may read a past decision: the settlement system, and inspectors within their regions
(the region of the decision's institution)."""


_SETTLEMENT_BODY: Final = {
    "requestBody": {
        "content": {JSON: {"schema": {"$ref": f"{REF_PREFIX}SettlementIn"}}},
        "required": True,
    }
}
"""The body of ``POST /v1/score`` as FastAPI documents a ``SettlementIn`` body parameter
(the route reads its body itself: :func:`read_settlement`)."""
_VALIDATION_ERROR: Final[dict[int | str, dict[str, Any]]] = {
    422: {
        "description": "Validation Error",
        "content": {JSON: {"schema": {"$ref": f"{REF_PREFIX}HTTPValidationError"}}},
    }
}


def read_settlement(body: bytes, content_type: str | None) -> SettlementIn:
    """The settlement in a request's raw ``body``, read exactly as FastAPI reads a
    ``SettlementIn`` body parameter, only faster where it can be.

    A JSON body (``application/json``) goes straight through ``model_validate_json``.
    Anything that does not pass (or another content type) is read again the way FastAPI
    reads a body: JSON only under a JSON content type (else the bytes themselves), a body
    that is not JSON a 422 ``json_invalid`` at ``("body", position)``, one that cannot be
    decoded a 400, no body a 422 ``missing``, and the value validated as FastAPI does
    (``from_attributes``), every problem a 422 located under ``"body"``
    (``RequestValidationError``, answered by FastAPI's own handler). So a bad request gets
    the same answer as from a FastAPI body parameter, and a request such a parameter
    accepts is accepted (a UTF-8 byte order mark, say)."""
    if content_type == JSON and body:
        try:
            return SettlementIn.model_validate_json(body)
        except ValidationError:
            pass  # named below, as FastAPI names them
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    value: Any = body  # not JSON: FastAPI validates the bytes themselves
    if content_type and _is_json(content_type):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as error:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", error.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": error.msg},
                    }
                ],
                body=error.doc,
            ) from error
        except Exception as error:  # undecodable bytes, nesting too deep
            raise HTTPException(
                status_code=400, detail="There was an error parsing the body"
            ) from error
    try:
        return SettlementIn.model_validate(value, from_attributes=True)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)],
            body=value,
        ) from None


def _is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of ``content_type`` as JSON."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _openapi_with_settlement(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with the schemas of ``SettlementIn`` (and of the models it nests)
    among the components, where FastAPI puts those of a body parameter."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            schema = TypeAdapter(SettlementIn).json_schema(
                ref_template=f"{REF_PREFIX}{{model}}", mode="validation"
            )
            schemas = document["components"]["schemas"]
            schemas.update(schema.pop("$defs", {}), SettlementIn=schema)
            document["components"]["schemas"] = dict(sorted(schemas.items()))
            # through FastAPI's OpenAPI model, as get_openapi does (1.0 for 1, no null defaults)
            app.openapi_schema = jsonable_encoder(
                OpenAPI.model_validate(document), by_alias=True, exclude_none=True
            )
        return app.openapi_schema

    return openapi


async def _follow_model(model: ModelInForce, every: float) -> None:
    """Look for a newly promoted model every ``every`` seconds, off the event loop."""
    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(model.refresh)


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The scorer over the store of ``settings`` (or over ``engine``, for tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or create_store_engine(
            settings.store_url, background_checkpoints=True
        )
        checkpoints = Checkpoints(app.state.engine).start() if own else None
        app.state.rules = RuleBaseInForce(settings.rules_file)
        app.state.keys = KeyRing(app.state.engine)
        app.state.credit = load_scheme(settings.credit_file)
        app.state.model = model = ModelInForce(
            settings.tracking_uri,
            model_name=settings.model_name,
            budget_ms=settings.model_budget_ms,
            cooloff_seconds=settings.model_cooloff_seconds,
            review_threshold=settings.model_review_threshold,
        )
        await asyncio.to_thread(model.refresh)
        follow = asyncio.create_task(_follow_model(model, settings.model_refresh_seconds))
        try:
            yield
        finally:
            follow.cancel()
            metrics.leave()  # several workers: this one's live gauges stop counting
            if checkpoints is not None:
                await asyncio.to_thread(checkpoints.stop)
            if own:
                app.state.engine.dispose()

    app = FastAPI(
        title="fundguard scorer",
        version="1",
        summary="Real-time fraud screening of medical-insurance settlements (医保结算)",
        lifespan=lifespan,
    )

    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)

    api = APIRouter(
        responses={
            401: {"model": ErrorOut, "description": "no API key, or an unknown or revoked one"},
            403: {"model": ErrorOut, "description": "the key's role may not do this"},
            503: {"model": ErrorOut, "description": "the store is unavailable: nothing decided"},
        }
    )

    @app.exception_handler(cases.UnknownCase)
    async def no_such_case(_request: Request, exc: cases.UnknownCase) -> JSONResponse:
        # another region's case is answered like a case that does not exist
        return JSONResponse(
            status_code=404, content={"detail": f"no case {exc.args[0]} in your regions"}
        )

    @app.exception_handler(cases.IllegalTransition)
    async def illegal_transition(_request: Request, exc: cases.IllegalTransition) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(DBAPIError)
    async def store_unavailable(_request: Request, exc: DBAPIError) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"the store is unavailable, nothing was decided: {exc.orig!r}"},
        )

    @api.post(
        "/v1/score",
        response_model=ScoreOut,
        responses=_VALIDATION_ERROR,
        tags=["scoring"],
        openapi_extra=_SETTLEMENT_BODY,
    )
    async def score(request: Request, _: SettlementSystem) -> Response:
        # the settlement is read from the raw body (read_settlement): the request's bytes
        # are what its sha256 is stored of, and validating them once, as JSON, is cheaper
        # than FastAPI's parsing of a body parameter (and no docstring: none in the OpenAPI)
        raw = await request.body()
        settlement = read_settlement(raw, request.headers.get("content-type"))
        state = request.app.state
        scored = scoring.score(
            state.engine,
            settlement,
            raw,
            state.rules.current(),
            state.model,
            settings.watch_review_threshold,
            state.credit,
        )
        if scored.replayed:
            metrics.replayed.inc()
        else:
            metrics.child(metrics.decisions, scored.decision).inc()
            if scored.degraded_cause:
                metrics.child(metrics.degraded, scored.degraded_cause).inc()
            for rule_id, action in scored.hits:
                metrics.child(metrics.hits, rule_id, action).inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "decision",
                extra={
                    "settlement_id": settlement.settlement_id,
                    "institution_id": settlement.institution_id,
                    "decision": scored.decision,
                    "rules": [rule_id for rule_id, _ in scored.hits],
                    "degraded": scored.degraded,
                    "degraded_cause": scored.degraded_cause,
                    "model_score": scored.model_score,
                    "challenger_version": scored.challenger_version,
                    "challenger_score": scored.challenger_score,
                    "replayed": scored.replayed,
                },
            )
        return Response(content=scored.body, media_type=JSON)

    @api.get(
        "/v1/decisions/{settlement_id}",
        response_model=DecisionOut,
        responses={404: {"model": ErrorOut, "description": "no decision for this settlement"}},
        tags=["scoring"],
    )
    async def decision(settlement_id: str, request: Request, caller: DecisionReader) -> DecisionOut:
        explained = audit.explain(request.app.state.engine, settlement_id)
        if explained is not None and caller.role is Role.INSPECTOR:
            with request.app.state.engine.connect() as conn:
                region = cases.institution_region(conn, explained.institution_id)
            if not caller.sees_region(region):  # as if it did not exist: a 404
                explained = None
        if explained is None:
            raise HTTPException(
                status_code=404, detail=f"settlement {settlement_id} was never scored here"
            )
        return explained

    @api.post(
        "/v1/settlements/{settlement_id}/reversal",
        response_model=ReversalOut,
        responses={404: {"model": ErrorOut, "description": "no decision for this settlement"}},
        tags=["scoring"],
    )
    async def reversal(
        settlement_id: str, reversal: ReversalIn, request: Request, _: SettlementSystem
    ) -> ReversalOut:
        try:
            return scoring.reverse(request.app.state.engine, settlement_id, reversal.reversed_at)
        except scoring.UnknownSettlement:
            raise HTTPException(
                status_code=404, detail=f"settlement {settlement_id} was never scored here"
            ) from None

    @api.post("/v1/trace-events", response_model=TraceEventsOut, tags=["traceability"])
    async def trace_events(
        events: Annotated[list[TraceEventIn], Body(max_length=10_000)],
        request: Request,
        _: SettlementSystem,
    ) -> TraceEventsOut:
        with request.app.state.engine.begin() as conn:
            recorded = record_stock_events(
                conn,
                [
                    StockEventIn(
                        trace_code=e.trace_code,
                        event_type=StockEvent(e.event_type.value),
                        institution_id=e.institution_id,
                        event_at=e.event_at,
                    )
                    for e in events
                ],
            )
        return TraceEventsOut(received=len(events), recorded=recorded)

    @api.get(
        "/v1/credit/{entity_type}/{entity_id}",
        response_model=CreditOut,
        responses={404: {"model": ErrorOut, "description": "not in the inspector key's regions"}},
        tags=["credit"],
    )
    async def credit(
        entity_type: Party,
        entity_id: Annotated[str, Path(min_length=1, max_length=64)],
        request: Request,
        caller: CreditReader,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        at: Annotated[
            datetime | None,
            Query(description="the credit as of this time (Asia/Shanghai without an offset)"),
        ] = None,
    ) -> CreditOut:
        """The credit (医保信用) of an institution, a patient or a doctor, now or ``at`` a
        time: score, grade and the latest ``limit`` events behind them. An entity nothing
        has moved has the scheme's starting score and no events."""
        if at is not None and not 1900 <= at.year <= 2999:
            raise HTTPException(
                status_code=422,
                detail=[
                    {
                        "loc": ["query", "at"],
                        "msg": f"a time between the years 1900 and 2999, got {at.isoformat()}",
                        "type": "value_error",
                    }
                ],
            )
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=SHANGHAI)
        with request.app.state.engine.connect() as conn:
            if caller.role is Role.INSPECTOR and not any(
                caller.sees_region(r)
                for r in cases.party_regions(conn, entity_type.value, entity_id)
            ):  # another region's account: as if it did not exist
                raise HTTPException(
                    status_code=404,
                    detail=f"no {entity_type.value} {entity_id} in the key's regions",
                )
            return credit_accounts.explain(
                conn,
                request.app.state.credit,
                entity_type,
                entity_id,
                at=at,
                limit=limit,
            )

    unknown_case: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorOut, "description": "no such case in the key's regions"}
    }
    illegal_move: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorOut, "description": "the case's status forbids this"}
    }

    @api.get("/v1/cases", response_model=list[CaseOut], tags=["cases"])
    async def case_queue(
        request: Request,
        caller: Inspector,
        status: CaseStatus | None = None,
        region: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
        pattern: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        institution: Annotated[
            str | None,
            Query(min_length=1, max_length=64, description="cases concerning this institution"),
        ] = None,
        min_amount_at_risk: Annotated[
            Decimal | None,
            Query(ge=0, max_digits=18, decimal_places=2, description="the least amount at risk"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[CaseOut]:
        """The inspector's queue: the cases of the key's regions, highest priority (expected
        loss, yuan) first. A ``region`` outside the key's regions gives an empty list."""
        regions = None if caller.role is Role.ADMIN or not caller.regions else caller.regions
        with request.app.state.engine.connect() as conn:
            return cases.queue(
                conn, regions=regions, status=status, region=region, pattern=pattern,
                institution=institution, min_amount_at_risk=min_amount_at_risk,
                limit=limit, offset=offset,
            )  # fmt: skip

    @api.get(
        "/v1/cases/{case_id}", response_model=CaseDetailOut, responses=unknown_case, tags=["cases"]
    )
    async def case_detail(
        case_id: Annotated[str, Path(min_length=1, max_length=64)],
        request: Request,
        caller: Inspector,
    ) -> CaseDetailOut:
        """A case with its flags and their evidence: the rule hits in words, each trace code's
        timeline, the earlier settlements, the group's members and admissions, where the
        institution stands in its peer group, the models' reasons, and its events."""
        with request.app.state.engine.connect() as conn:
            return cases.case_detail(
                conn, case_id, visible=caller.sees_region,
                rulebase=request.app.state.rules.current(),
            )  # fmt: skip

    @api.post(
        "/v1/cases/{case_id}/verdict",
        response_model=CaseOut,
        responses=unknown_case | illegal_move,
        tags=["cases"],
    )
    async def case_verdict(
        case_id: Annotated[str, Path(min_length=1, max_length=64)],
        verdict: VerdictIn,
        request: Request,
        caller: Inspector,
    ) -> CaseOut:
        """Close a case: ``confirmed`` or ``dismissed`` (with why). The verdict becomes a label
        per pattern of the case and moves credit. A closed case is reopened first (409)."""
        return cases.record_verdict(
            request.app.state.engine, case_id, CaseStatus(verdict.verdict.value),
            verdict.note, actor=caller.key_id, visible=caller.sees_region,
            scheme=request.app.state.credit,
        )  # fmt: skip

    @api.post(
        "/v1/cases/{case_id}/status",
        response_model=CaseOut,
        responses=unknown_case | illegal_move,
        tags=["cases"],
    )
    async def case_status(
        case_id: Annotated[str, Path(min_length=1, max_length=64)],
        move: StatusIn,
        request: Request,
        caller: Inspector,
    ) -> CaseOut:
        """Take a case up (``in_review``), give it back (``new``) or reopen a closed one
        (``in_review``); any other move is a 409."""
        return cases.set_status(
            request.app.state.engine, case_id, CaseStatus(move.status.value),
            actor=caller.key_id, visible=caller.sees_region, reason=move.reason,
        )  # fmt: skip

    @api.post(
        "/v1/cases/{case_id}/assign", response_model=CaseOut, responses=unknown_case,
        tags=["cases"],
    )  # fmt: skip
    async def case_assign(
        case_id: Annotated[str, Path(min_length=1, max_length=64)],
        assignment: AssignIn,
        request: Request,
        caller: Inspector,
    ) -> CaseOut:
        """Give a case to an inspector (``null``: take it back)."""
        return cases.assign(
            request.app.state.engine, case_id, assignment.assignee,
            actor=caller.key_id, visible=caller.sees_region,
        )  # fmt: skip

    @api.post(
        "/v1/cases/{case_id}/notes", response_model=CaseOut, responses=unknown_case,
        tags=["cases"],
    )  # fmt: skip
    async def case_note(
        case_id: Annotated[str, Path(min_length=1, max_length=64)],
        note: NoteIn,
        request: Request,
        caller: Inspector,
    ) -> CaseOut:
        """Add a note to the case's trail."""
        return cases.add_note(
            request.app.state.engine, case_id, note.note,
            actor=caller.key_id, visible=caller.sees_region,
        )  # fmt: skip

    @api.get("/v1/admin/blacklist", response_model=list[BlacklistOut], tags=["admin"])
    async def blacklist_list(request: Request, _: Admin) -> list[BlacklistOut]:
        return [
            BlacklistOut(institution_id=i, reason=r, added_at=a)
            for i, r, a in blacklist.listed(request.app.state.engine)
        ]

    @api.put("/v1/admin/blacklist/{institution_id}", response_model=BlacklistOut, tags=["admin"])
    async def blacklist_put(
        institution_id: Annotated[str, Path(min_length=1, max_length=64)],
        entry: BlacklistIn,
        request: Request,
        _: Admin,
    ) -> BlacklistOut:
        engine = request.app.state.engine
        blacklist.add(engine, institution_id, entry.reason)
        for i, r, a in blacklist.listed(engine):
            if i == institution_id:
                return BlacklistOut(institution_id=i, reason=r, added_at=a)
        raise HTTPException(status_code=500, detail="listed, then not found")  # pragma: no cover

    @api.delete(
        "/v1/admin/blacklist/{institution_id}",
        status_code=204,
        responses={404: {"model": ErrorOut, "description": "not on the black list"}},
        tags=["admin"],
    )
    async def blacklist_delete(institution_id: str, request: Request, _: Admin) -> Response:
        if not blacklist.remove(request.app.state.engine, institution_id):
            raise HTTPException(
                status_code=404, detail=f"{institution_id} is not on the black list"
            )
        return Response(status_code=204)

    app.include_router(api)
    web_pages.install(app, settings)  # the inspectors' pages under /ui (not in the OpenAPI)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        return metrics.exposition()

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "time": datetime.now(UTC).isoformat()}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> dict[str, str]:
        with request.app.state.engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return {
            "status": "ready",
            "schema": str(version),
            "model": request.app.state.model.describe(),
        }

    app.openapi = _openapi_with_settlement(app)  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app as ``fundguard serve`` runs it: settings from the environment (a factory,
    so every worker process builds its own engine)."""
    return create_app(Settings())
