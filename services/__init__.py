"""meshserve's microservices: feature (online features), cache (predictions) and inference (drives Triton)."""
