"""The inspectors' web pages (served under /ui)."""
