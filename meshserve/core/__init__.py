"""What every meshserve process shares: settings, lifecycle, health, error mapping, request ids and logging."""
