"""The whole job: distill -> quantize -> export (ONNX, GGUF) -> check -> bench -> report, with a stage cache."""
