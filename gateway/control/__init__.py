"""State shared by every gateway: the control store (live route table, rollout state, audit log, variant
statistics in flight) and the audit log. Imports only `meshserve.core`."""
