"""Graph analysis of patient–provider networks: the two analyses ``fundguard screen`` runs.

- :func:`group_admission_flags` (``models.coadmission``): the co-admission network,
  ``group_admission`` flags with their members (结伴住院).
- :func:`code_flow_flags` (``models.codeflow``): the code-flow network, ``resale_hub``
  institutions and ``drug_hoarding`` patients (回流药, 倒卖).

Both take the DuckDB connection of ``features.batch.open_history``, are deterministic (the
same history gives the same flags and group ids) and say ``review``, never ``reject``.
Their evidence keys are documented on each function.
"""

from __future__ import annotations

from models.coadmission import CoAdmissionParams, group_admission_flags, group_id
from models.codeflow import CodeFlowParams, code_flow_flags

__all__ = [
    "CoAdmissionParams",
    "CodeFlowParams",
    "code_flow_flags",
    "group_admission_flags",
    "group_id",
]
