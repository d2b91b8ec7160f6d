"""The adapters: gRPC servicers (Predict and the Open Inference Protocol), the REST codec and server, and the
admin API. Each turns a request into a call of a plain handler and the answer back; the logic lives below
(`serving`, `routing`, `rollout`)."""
