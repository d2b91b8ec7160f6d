"""Triton python-backend model that runs an ONNX file with onnxruntime, in place of Triton's onnxruntime backend.

meshserve.launcher.onnx_runner renders this file into each version directory of an ONNX model it serves; the copies
differ only in the RUNNER line. Inputs and outputs are matched by name, as Triton's onnxruntime backend does;
their names and datatypes come from the model's config.pbtxt, which meshserve checked against the ONNX file and
Triton checks every request against. It needs numpy and onnxruntime importable from the python backend.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

RUNNER = {"onnx_file": "model.onnx", "intra_op_threads": 1}


def _providers(args: dict) -> list:
    # KIND_GPU/KIND_AUTO put the instance on a GPU when one exists; follow it there if onnxruntime can.
    if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        device = int(args.get("model_instance_device_id", 0))
        return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _to_onnx(array: np.ndarray, is_string: bool) -> np.ndarray:
    # Triton hands BYTES as an object array of bytes; onnxruntime's string tensors take str
    if is_string:
        return np.array(
            [v.decode() if isinstance(v, bytes) else v for v in array.ravel()], dtype=object
        ).reshape(array.shape)
    return array


def _to_triton(array: np.ndarray, dtype) -> np.ndarray:
    if dtype is np.object_:  # onnxruntime returns str; Triton sends bytes
        return np.array(
            [v.encode() if isinstance(v, str) else v for v in array.ravel()], dtype=object
        ).reshape(array.shape)
    return np.ascontiguousarray(array, dtype=dtype)


def _error(message: str, code) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}
        path = os.path.join(args["model_repository"], args["model_version"], RUNNER["onnx_file"])
        if os.path.isdir(path):  # model.onnx as a directory, beside its external weights, as Triton allows
            path = os.path.join(path, "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = RUNNER["intra_op_threads"]
        self.session = ort.InferenceSession(path, sess_options=options, providers=_providers(args))
        self.strings = {arg.name for arg in self.session.get_inputs() if arg.type == "tensor(string)"}

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        # Requests whose inputs agree in all but the batch dimension run as one session.run, their rows stacked:
        # the dynamic batcher's work is wasted otherwise. Without batching each request runs alone.
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            feeds = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # an optional input may be left out
                    feeds[name] = _to_onnx(tensor.as_numpy(), name in self.strings)
            key = tuple((name, a.shape[1:]) for name, a in feeds.items()) if self.batching and feeds else (i,)
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            self._run(members, responses)
        return responses

    def _run(self, members: list, responses: list) -> None:
        stacked = len(members) > 1
        names = list(members[0][1])
        feeds = {n: np.concatenate([f[n] for _, f in members]) for n in names} if stacked else members[0][1]
        try:
            results = self.session.run(list(self.outputs), feeds)
        except Exception as exc:  # reported to each caller rather than crashing the stub
            code = pb_utils.TritonError.INTERNAL
            if type(exc).__name__ == "InvalidArgument":  # onnxruntime's own class for bad feeds
                code = pb_utils.TritonError.INVALID_ARG
            for i, _ in members:
                responses[i] = _error(f"onnxruntime failed: {exc}", code)
            return
        outputs = {
            name: _to_triton(a, dtype) for (name, dtype), a in zip(self.outputs.items(), results, strict=True)
        }
        if not stacked:
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            responses[members[0][0]] = pb_utils.InferenceResponse(output_tensors=tensors)
            return
        rows = [len(member[names[0]]) for _, member in members]
        total = sum(rows)
        short = [name for name, array in outputs.items() if array.ndim == 0 or len(array) != total]
        if short:  # the file does not keep rows apart: the model cannot batch, and its config says it can
            message = f"output {short[0]!r} does not have one row per input row: set max_batch_size: 0"
            for i, _ in members:
                responses[i] = _error(message, pb_utils.TritonError.INTERNAL)
            return
        offsets = np.cumsum([0, *rows])
        for (i, _), start, end in zip(members, offsets[:-1], offsets[1:], strict=True):
            tensors = [pb_utils.Tensor(name, array[start:end]) for name, array in outputs.items()]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.session = None
