"""Runtimes: one Session protocol over transformers (the float reference), onnxruntime and llama.cpp."""

from .base import Session
from .registry import RUNTIMES, detect_format, open_session
from .sampling import Sampler

__all__ = ["RUNTIMES", "Sampler", "Session", "detect_format", "open_session"]
