"""The sample fraud models (trained from a fixed seed) and their Triton repository. Imports the feature
registry and drift profile (`meshserve.feature`) only."""
