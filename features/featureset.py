"""Named, versioned feature sets: the columns a model was trained on, stored with the model.

A model is only valid with the exact feature vector it was fitted on. Every feature
definition (settlement, institution) publishes one :class:`FeatureSet`: its name, a version
bumped whenever a definition changes, and its columns in vector order. The model registry
stores the set's ``tag`` and ``fingerprint`` beside the model; the scorer refuses a model
whose fingerprint differs from the feature set it builds online.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned list of feature columns (the order is the vector's order)."""

    name: str
    version: str
    columns: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the sha256 of name, version and columns."""
        text = "\x1f".join((self.name, self.version, *self.columns))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """``name@version``, e.g. ``settlement@1``."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, object]:
        """The set as JSON-able data (logged with a model)."""
        return {
            "name": self.name,
            "version": self.version,
            "columns": list(self.columns),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSet:
        """The set logged with a model; a fingerprint that does not match is refused."""
        columns = data["columns"]
        if not isinstance(columns, list | tuple):
            raise ValueError("feature set columns must be a list")
        fs = cls(str(data["name"]), str(data["version"]), tuple(str(c) for c in columns))
        expected = data.get("fingerprint")
        if expected is not None and expected != fs.fingerprint:
            raise ValueError(f"feature set {fs.tag}: fingerprint {expected} != {fs.fingerprint}")
        return fs
