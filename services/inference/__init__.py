"""Inference service: the mesh's only client of Triton Inference Server."""
