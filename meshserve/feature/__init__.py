"""The feature contract: the wire format (`v1`, generated), the feature registry (entities, features and the
vectors they feed, declared once in YAML) and drift against the training profile. Imports only
`meshserve.defaults`."""
