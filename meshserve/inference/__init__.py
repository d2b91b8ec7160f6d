"""The inference service's contract: the wire format (`v1`, generated) and `triton_control`, the Triton calls
the gateway and the inference service pass through as bytes."""
