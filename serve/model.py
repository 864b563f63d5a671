"""The settlement model in force in a running scorer, and its signal on one settlement.

The scorer loads the registered model that carries the alias ``champion`` (and
``challenger``, scored in shadow: logged and stored, never deciding) from the MLflow
registry of the settings. A background refresh (``refresh()``, every
``model_refresh_seconds``) follows the aliases: a newly promoted version is loaded off the
request path and swapped in whole; a version that cannot be loaded is refused (logged) and
the model already in force keeps answering.

The scorer answers **degraded** (from the rule base and the ledger alone, and says so)
when there is no model, when the model was trained on another feature set than the one the
scorer builds, when the model fails on a settlement, or when computing the features and
the score took longer than the time budget (``model_budget_ms``). A model over its budget
``set_aside_after`` times in a row (3) is set aside for ``model_cooloff_seconds``, so that
a slow model costs a few slow answers, not every answer, while one slow call on a busy
machine does not take the model out of ten seconds of answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from features.settlement import SettlementView
from features.settlement_features import SETTLEMENT_FEATURES

if TYPE_CHECKING:  # the registry imports MLflow: only ``refresh`` needs it, off the request path
    from models.registry import ScoringModel
    from models.supervised import Reason

log = logging.getLogger("fundguard.model")

NO_MODEL: Final = "no model is registered as champion"


@dataclass(frozen=True)
class ModelSignal:
    """What the model says of one settlement; ``score`` is None when the answer is degraded
    (``reason`` says why)."""

    name: str | None = None
    version: str | None = None
    score: float | None = None
    threshold: float | None = None
    reasons: tuple[Reason, ...] = ()
    micros: int = 0
    reason: str | None = None
    cause: str | None = None
    """The kind of degradation, for metrics: ``no_model``, ``refused``, ``set_aside``,
    ``failed`` or ``over_budget``."""
    challenger_version: str | None = None
    challenger_score: float | None = None

    @property
    def degraded(self) -> bool:
        return self.score is None

    @property
    def asks_review(self) -> bool:
        return (
            self.score is not None and self.threshold is not None and self.score >= self.threshold
        )


class ModelInForce:
    """The champion (and challenger) a scorer process holds; ``signal()`` is safe from any
    thread, ``refresh()`` runs in the background."""

    def __init__(
        self,
        tracking_uri: str | None,
        *,
        model_name: str,
        budget_ms: float = 10.0,
        cooloff_seconds: float = 10.0,
        set_aside_after: int = 3,
        review_threshold: float | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.budget_us = int(budget_ms * 1000)
        self.cooloff_seconds = cooloff_seconds
        self.set_aside_after = set_aside_after
        self._over_budget_in_a_row = 0
        self.review_threshold = review_threshold
        self.champion: ScoringModel | None = None
        self.challenger: ScoringModel | None = None
        self.refused: str | None = None
        """Why the last version the champion alias pointed at was not taken, if it was not."""
        self._lock = threading.Lock()
        self._set_aside_until = 0.0

    def refresh(self) -> None:
        """Load what the aliases point at now, where it changed."""
        from models.registry import CHALLENGER, CHAMPION

        if self.tracking_uri is None:
            return
        with self._lock:
            self.champion = self._follow(self.tracking_uri, CHAMPION, self.champion)
            self.challenger = self._follow(self.tracking_uri, CHALLENGER, self.challenger)

    def _follow(
        self, tracking_uri: str, alias: str, held: ScoringModel | None
    ) -> ScoringModel | None:
        from models.registry import CHAMPION, ModelArtifactError, load_alias

        try:
            loaded = load_alias(tracking_uri, self.model_name, alias)
        except ModelArtifactError as error:
            if alias == CHAMPION:
                self.refused = str(error)
            log.error("model refused", extra={"alias": alias, "error": str(error)})
            return held
        except Exception as error:  # the registry itself is unreachable: keep what we hold
            log.error("model registry unreachable", extra={"alias": alias, "error": repr(error)})
            return held
        if loaded is None:
            return None
        if held is not None and held.version == loaded.version:
            return held
        if loaded.fingerprint != SETTLEMENT_FEATURES.fingerprint:
            problem = (
                f"{loaded.name} version {loaded.version} was trained on feature set "
                f"{loaded.feature_set} ({loaded.fingerprint}); this scorer builds "
                f"{SETTLEMENT_FEATURES.tag} ({SETTLEMENT_FEATURES.fingerprint})"
            )
            if alias == CHAMPION:
                self.refused = problem
            log.error("model refused", extra={"alias": alias, "error": problem})
            return held
        if alias == CHAMPION:
            self.refused = None
        # the first prediction of a booster is many times slower than the next: pay it here
        loaded.predict_row(np.zeros(len(SETTLEMENT_FEATURES.columns)))
        log.info("model loaded", extra={"alias": alias, "version": loaded.version})
        return loaded

    def signal(self, view: SettlementView, features: Callable[[], np.ndarray]) -> ModelSignal:
        """The champion's score of ``view`` on its ``features`` (the online vector, from the
        stored state before the settlement is recorded; computed within the time budget), or
        a degraded signal saying why there is none."""
        champion, challenger = self.champion, self.challenger
        if champion is None:
            return ModelSignal(
                reason=self.refused or NO_MODEL, cause="refused" if self.refused else "no_model"
            )
        name, version = champion.name, champion.version
        if time.monotonic() < self._set_aside_until:
            return ModelSignal(
                name=name,
                version=version,
                reason=f"the model is set aside after exceeding its {self._budget()} budget",
                cause="set_aside",
            )
        started = time.perf_counter()
        try:
            row = features()
            score = champion.predict_row(row)
        except Exception as error:
            log.exception("model failed", extra={"settlement_id": view.settlement_id})
            return ModelSignal(
                name=name, version=version, reason=f"the model failed: {error!r}", cause="failed"
            )
        micros = int((time.perf_counter() - started) * 1e6)
        if micros > self.budget_us:
            self._over_budget_in_a_row += 1
            if self._over_budget_in_a_row >= self.set_aside_after:
                self._over_budget_in_a_row = 0
                self._set_aside_until = time.monotonic() + self.cooloff_seconds
            return ModelSignal(
                name=name,
                version=version,
                micros=micros,
                reason=f"the model took {micros} µs, over its {self._budget()} budget",
                cause="over_budget",
            )
        self._over_budget_in_a_row = 0
        threshold = (
            self.review_threshold
            if self.review_threshold is not None
            else champion.review_threshold
        )
        reasons: tuple[Reason, ...] = ()
        if score >= threshold:  # explained only when it asks for review (rare, and costs more)
            reasons = tuple(champion.model.reasons(row.reshape(1, -1))[0])
        shadow_version, shadow_score = None, None
        if challenger is not None and challenger.version != champion.version:
            try:
                shadow_version, shadow_score = challenger.version, challenger.predict_row(row)
            except Exception:  # the challenger never affects an answer
                log.exception("challenger failed", extra={"settlement_id": view.settlement_id})
        return ModelSignal(
            name=name,
            version=version,
            score=score,
            threshold=threshold,
            reasons=reasons,
            micros=micros,
            challenger_version=shadow_version,
            challenger_score=shadow_score,
        )

    def describe(self) -> str:
        """The model in force in words (``/readyz``)."""
        champion = self.champion
        if champion is None:
            return f"none ({self.refused or NO_MODEL}): answers are degraded"
        return f"{champion.name} version {champion.version} ({champion.feature_set})"

    def _budget(self) -> str:
        return f"{self.budget_us / 1000:g} ms"
