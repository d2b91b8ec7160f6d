"""What every meshserve process shares: settings, lifecycle, health, error mapping, request ids, logging, TLS,
authentication, channels, coalescing and a TTL cache. The bottom of the house: imports nothing else of ours."""
