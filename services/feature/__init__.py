"""Feature service: online features by entity key, with a freshness status per value."""
