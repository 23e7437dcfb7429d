"""Test-wide settings: local Ray without token auth, caches inside the test's temp area."""

from __future__ import annotations

import os

# Ray 2.60 turns token authentication on by default; local test clusters run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
