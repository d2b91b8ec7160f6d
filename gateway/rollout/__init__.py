"""Changing what serves: automated canary analysis (judge and controller), blue-green version switches and the
checks that a version is served. Imports `gateway.routing`, `gateway.serving` and `meshserve.core`."""
