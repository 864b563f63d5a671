"""What the inspectors' pages say, in Chinese: one name for each pattern, status, entity
type, action, case event and code step, and the masking of patient identifiers.

Every page names a pattern through :data:`PATTERN_NAMES` (the patterns of CONTRACT.md §4
and the two the credit policy adds), so a pattern reads the same on the queue, the case
page, the print-out and the filters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Final

from features.tables import PATTERNS

PATTERN_NAMES: Final[dict[str, str]] = {
    "duplicate_trace_code": "追溯码重复结算（回流药/倒卖）",
    "split_sale_overrun": "拆零超出整包",
    "trace_code_mismatch": "追溯码与药品不符（串换）",
    "missing_trace_code": "无有效追溯码（无码不付）",
    "unpurchased_trace_code": "无进货记录（虚售/回流）",
    "gender_restriction": "性别限定",
    "age_restriction": "年龄限定",
    "over_frequency": "超频次",
    "over_quantity": "超量开药",
    "split_admission": "分解住院",
    "group_admission": "结伴住院（低标准入院）",
    "drug_hoarding": "囤药倒卖",
    "resale_hub": "回流药收购点",
    "anomalous_institution": "机构异常（偏离同类机构）",
    "anomalous_settlement": "结算异常",
    "blacklisted_institution": "黑名单机构",
    "credit_supervision": "信用监管抽查",
    "suspended_doctor": "医师暂停医保支付资格",
}
"""The Chinese name of every pattern a flag or a hit may carry."""

STATUS_NAMES: Final = {
    "new": "待处理",
    "in_review": "核查中",
    "confirmed": "已确认违规",
    "dismissed": "已排除",
}
ENTITY_NAMES: Final = {
    "settlement": "结算",
    "patient": "参保人",
    "institution": "医药机构",
    "group": "团伙",
}
ACTION_NAMES: Final = {"reject": "拒付", "review": "人工审核", "info": "提示"}
SOURCE_NAMES: Final = {"batch": "批量筛查", "online": "实时审核"}
EVENT_NAMES: Final = {
    "filed": "立案",
    "flag_added": "新增疑点",
    "assigned": "指派",
    "status_changed": "状态变更",
    "note": "备注",
    "verdict": "结论",
    "reopened": "重新打开",
    "reveal": "查看身份信息",
}
STEP_NAMES: Final = {
    "received": "入库（进货）",
    "returned": "退货",
    "sold": "销售结算",
    "reversed": "退费",
    "billed": "本次结算",
}
VISIT_NAMES: Final = {"outpatient": "门诊", "inpatient": "住院", "pharmacy": "药店购药"}
KIND_NAMES: Final = {
    "hospital": "医院",
    "primary_care": "基层医疗机构",
    "clinic": "诊所",
    "pharmacy": "药店",
}
FEATURE_NAMES: Final = {
    "price_at_cap_rate": "按最高限价收费占比",
    "night_share": "夜间结算占比",
    "other_district_patient_share": "外区县参保人占比",
    "other_city_patient_share": "外市参保人占比",
    "price_index": "价格指数",
    "price_ratio_max": "单价比（最大）",
    "price_ratio_mean": "单价比（平均）",
    "quantity_ratio_max": "数量比（最大）",
    "service_quantity_ratio_max": "诊疗数量比（最大）",
    "log_total_amount": "结算总额（对数）",
}
FIELD_NAMES: Final = {
    "username": "用户名",
    "password": "密码",
    "region": "统筹区",
    "pattern": "疑点类型",
    "institution": "机构编码",
    "min_amount_at_risk": "最低涉及金额",
    "status": "状态",
    "page": "页码",
    "verdict": "结论",
    "note": "说明",
    "reason": "原因",
    "assignee": "承办人",
    "csrf_token": "表单令牌",
}
"""The Chinese name of each form field, for the errors a form is re-rendered with."""


def pattern_name(pattern: str) -> str:
    return PATTERN_NAMES.get(pattern, pattern)


def missing_names() -> list[str]:
    """The patterns of CONTRACT.md §4 without a Chinese name (none, the tests hold)."""
    return [p for p in PATTERNS if p not in PATTERN_NAMES]


def yuan(amount: Decimal | float | int | None) -> str:
    """An amount in yuan as an inspector reads it: ¥1,234.50."""
    if amount is None:
        return "—"
    return f"¥{Decimal(amount).quantize(Decimal('0.01')):,}"


# --- patient identifiers ------------------------------------------------------------------


def mask_id(value: str) -> str:
    """A patient identifier with its middle hidden: the first 2 and last 4 characters kept
    (``3101********1234``); a short one keeps less, never more than half of it."""
    n = len(value)
    if n >= 10:
        head, tail = 2, 4
    elif n >= 6:
        head, tail = 1, 2
    else:
        head, tail = 0, min(1, n - 1) if n > 1 else 0
    return value[:head] + "*" * (n - head - tail) + (value[n - tail :] if tail else "")


_PATIENT_KEYS: Final = frozenset({"patient_id", "patient_ids", "members"})


def patients_in(evidence: Any) -> set[str]:
    """The patient identifiers an evidence dict names (``patient_id``, ``members`` ...)."""
    found: set[str] = set()
    if isinstance(evidence, dict):
        for key, value in evidence.items():
            if key in _PATIENT_KEYS:
                if isinstance(value, str):
                    found.add(value)
                elif isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
            found |= patients_in(value)
    elif isinstance(evidence, list):
        for value in evidence:
            found |= patients_in(value)
    return found


def masker(patient_ids: Iterable[str], *, reveal: bool) -> Callable[[str], str]:
    """A function that hides every one of ``patient_ids`` in a text (unless ``reveal``)."""
    ids = sorted({p for p in patient_ids if p}, key=len, reverse=True)
    if reveal or not ids:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(p) for p in ids))

    def hide(text: str) -> str:
        return pattern.sub(lambda m: mask_id(m.group(0)), text)

    return hide


def _status(value: object) -> str:
    return STATUS_NAMES.get(str(value), str(value or ""))


def event_words(kind: str, detail: str) -> str:
    """A case event's detail in words."""
    try:
        facts = json.loads(detail)
    except ValueError:
        return detail
    if not isinstance(facts, dict):
        return detail
    if kind in ("filed", "flag_added"):
        patterns = "、".join(pattern_name(p) for p in facts.get("patterns", ()))
        return f"{SOURCE_NAMES.get(facts.get('source', ''), facts.get('source', ''))}：{patterns}"
    if kind == "assigned":
        return f"{facts.get('from') or '（无）'} → {facts.get('to') or '（收回）'}"
    if kind in ("status_changed", "reopened"):
        words = f"{_status(facts.get('from'))} → {_status(facts.get('to', 'in_review'))}"
        return words + (f"（{facts['reason']}）" if facts.get("reason") else "")
    if kind == "note":
        return str(facts.get("note", ""))
    if kind == "verdict":
        words = _status(facts.get("verdict"))
        if facts.get("note"):
            words += f"：{facts['note']}"
        if facts.get("credit"):
            words += "；信用变动 " + "，".join(str(c) for c in facts["credit"])
        return words
    if kind == "reveal":
        return "显示了本案参保人身份信息"
    return detail
