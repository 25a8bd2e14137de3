"""The decode roofline: a decode step cannot be faster than reading its bytes at the memory bandwidth.

Single-stream decoding does a few FLOPs per weight byte, far below what the cores can do per byte of
bandwidth, so its ceiling is bandwidth / bytes-per-token; the fraction of that ceiling a runtime reaches
says how much room is left (and a fraction above ~1 says the byte count or the bandwidth is wrong).
"""

from __future__ import annotations


def roofline_tok_s(bandwidth_bytes_s: float, bytes_per_token: int) -> float:
    """Upper bound on decode tokens/s when every step streams `bytes_per_token` from memory."""
    return bandwidth_bytes_s / bytes_per_token if bytes_per_token > 0 else float("inf")


def roofline_fraction(decode_tok_s: float, bandwidth_bytes_s: float, bytes_per_token: int) -> float:
    """Achieved decode tokens/s as a fraction of the bandwidth bound."""
    bound = roofline_tok_s(bandwidth_bytes_s, bytes_per_token)
    return decode_tok_s / bound if bound not in (0.0, float("inf")) else 0.0


def achieved_gb_s(decode_tok_s: float, bytes_per_token: int) -> float:
    """The read bandwidth a runtime's decode implies (1e9 bytes/s)."""
    return decode_tok_s * bytes_per_token / 1e9
