"""The rule base in force in a running scorer, picked up again when its file changes.

The scorer reads the rule file named by the settings (the shipped ``rules/rulebase.yaml``
unless ``FUNDGUARD_RULES_FILE`` names another). At most once a second it looks at the
file's modification time and size; when they changed it reads the file, and only if the
new file is valid does it take it: a broken file is refused (logged with every problem
named) and the rules already in force keep answering.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from rules.base import RuleBase, RuleFileError, load_rulebase, shipped_rulebase

log = logging.getLogger("fundguard.rules")


class RuleBaseInForce:
    """The current rule base; ``current()`` is cheap and safe from any thread."""

    def __init__(self, path: Path | None, *, check_every: float = 1.0) -> None:
        self.path = path
        self.check_every = check_every
        self._lock = threading.Lock()
        self._rulebase = load_rulebase(path) if path else shipped_rulebase()
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self.refused: RuleFileError | None = None
        """The last file refused, while it is the file on disk."""

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        stat = self.path.stat()
        return (stat.st_mtime_ns, stat.st_size)

    def current(self) -> RuleBase:
        now = time.monotonic()
        if self.path is not None and now - self._checked >= self.check_every:
            with self._lock:
                if now - self._checked >= self.check_every:
                    self._checked = now
                    self._reload_if_changed()
        return self._rulebase

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._file_stamp()
        except OSError as exc:
            log.error("rule file %s unreadable, the rules in force stay: %s", self.path, exc)
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            rulebase = load_rulebase(self.path)
        except RuleFileError as exc:
            self.refused = exc
            log.error("rule file refused, the rules in force (%s) stay:\n%s",
                      self._rulebase.version, exc)  # fmt: skip
            return
        self.refused = None
        if rulebase.checksum != self._rulebase.checksum:
            log.warning("rule base %s (%s) now in force", rulebase.version, rulebase.checksum[:12])
            self._rulebase = rulebase
