"""Triton python-backend model: scores the `model.onnx` beside it with onnxruntime.

meshserve.samples.build copies this file unchanged into every version directory of the sample model. Input and
output names come from the model's config.pbtxt (generated from the feature registry), so nothing here repeats
them. It needs numpy and onnxruntime importable from the python backend's environment.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"
ONNX_PROBABILITIES = "probabilities"  # skl2onnx's [n, 2] class-probability output (zipmap off)


def _providers(args: dict) -> list:
    # KIND_AUTO puts the instance on a GPU when one exists; follow it there if onnxruntime can.
    if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        device = int(args.get("model_instance_device_id", 0))
        return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.width = int(config["input"][0]["dims"][-1])
        path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # requests are already batched; leave cores to the server
        self.session = ort.InferenceSession(path, sess_options=options, providers=_providers(args))
        self.onnx_input = self.session.get_inputs()[0].name

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batches: list[tuple[int, np.ndarray]] = []  # (request index, its rows)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            rows = None if tensor is None else tensor.as_numpy()
            if rows is None or rows.ndim != 2 or rows.shape[1] != self.width:
                message = f"input {self.input_name!r} must be FP32 [batch, {self.width}]"
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                )
                continue
            batches.append((i, rows.astype(np.float32, copy=False)))
        if not batches:
            return responses

        # One session.run over every request's rows: the dynamic batcher's work is wasted otherwise.
        stacked = np.concatenate([rows for _, rows in batches])
        try:
            (proba,) = self.session.run([ONNX_PROBABILITIES], {self.onnx_input: stacked})
        except Exception as exc:  # reported to each caller rather than crashing the stub
            for i, _ in batches:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"onnxruntime failed: {exc}", pb_utils.TritonError.INTERNAL)
                )
            return responses

        scores = np.ascontiguousarray(proba[:, 1:2], dtype=np.float32)  # P(class 1) as [n, 1]
        start = 0
        for i, rows in batches:
            end = start + len(rows)
            output = pb_utils.Tensor(self.output_name, scores[start:end])
            responses[i] = pb_utils.InferenceResponse(output_tensors=[output])
            start = end
        return responses

    def finalize(self) -> None:
        self.session = None
