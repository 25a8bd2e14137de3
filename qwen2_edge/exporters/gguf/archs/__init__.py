"""One class per llama.cpp architecture a Qwen2 / Qwen2-MoE model can be written in (encoding.py chooses)."""

from .base import FULL_WINDOW, Encoding, OutTensor, expert_width
from .granite_swa import SINK_OFF, GraniteSwa, GraniteSwaMoe
from .qwen2 import Qwen2, Qwen2Moe
from .step35 import Step35

__all__ = [
    "FULL_WINDOW",
    "SINK_OFF",
    "Encoding",
    "GraniteSwa",
    "GraniteSwaMoe",
    "OutTensor",
    "Qwen2",
    "Qwen2Moe",
    "Step35",
    "expert_width",
]
