"""Synthetic-province simulator: contract tables (CONTRACT.md section 3) with planted fraud and its truth."""

from features.simulate.config import SCALES, ScaleConfig, SimulationError
from features.simulate.province import SimulationSummary, simulate

__all__ = ["SCALES", "ScaleConfig", "SimulationError", "SimulationSummary", "simulate"]
