"""Exporters: ONNX (onnxruntime contrib ops) and GGUF (llama.cpp). Registry in registry.py."""
