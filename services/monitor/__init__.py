"""Monitor service: the prediction log of routes that ask for it, the labels joined to it by prediction id, and
quality per route, variant and model version (with the rollout judge's anytime-valid comparisons)."""
