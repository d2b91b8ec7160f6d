"""Quality and comparisons read through a real Redis equal scikit-learn's too: the quality tests of tests/unit
(written against SQLite) again on both stores."""

from __future__ import annotations

from tests.integration import test_monitor_stores
from tests.unit.test_monitor_quality import *  # noqa: F403 - the tests themselves, collected here again

open_store = (
    test_monitor_stores.open_store
)  # replaces the unit tests' fixture (SQLite only): sqlite and redis
