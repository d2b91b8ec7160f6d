"""meshserve's microservices: feature (online features), cache (predictions) and inference (drives Triton).
Each imports `meshserve`'s core and contracts (and the feature registry), never `gateway` or another service."""
