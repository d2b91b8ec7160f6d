"""Benchmark-only compute-bound model: a three-layer MLP with fixed random weights (seed 20261201).

Every execution pads its batch to max_batch_size rows and runs the whole network on one BLAS thread, so it costs
about a millisecond per batch, almost regardless of how many rows are real: the shape of a static engine on an
accelerator, where a batch of one costs nearly what a full batch does. Rows never affect each other.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from threadpoolctl import threadpool_limits

HIDDEN = 768
SEED = 20261201


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.rows = config["max_batch_size"]
        width = config["input"][0]["dims"][0]
        rng = np.random.default_rng(SEED)
        self.w1 = (rng.standard_normal((width, HIDDEN)) / np.sqrt(width)).astype(np.float32)
        self.w2 = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.w3 = (rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.limits = threadpool_limits(limits=1, user_api="blas")  # one core, like one accelerator stream

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        batch = np.concatenate(inputs)
        padded = np.zeros((max(self.rows, len(batch)), batch.shape[1]), dtype=np.float32)
        padded[: len(batch)] = batch
        hidden = np.maximum(padded @ self.w1, 0)
        hidden = np.maximum(hidden @ self.w2, 0)
        scores = (hidden @ self.w3)[: len(batch)]
        responses, start = [], 0
        for rows in inputs:
            out = pb_utils.Tensor("y", scores[start : start + len(rows)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(rows)
        return responses
