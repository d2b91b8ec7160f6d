"""The gateway: routes Predict and Open Inference Protocol calls through cache, features and inference."""
