"""genai_config.json: what onnxruntime-genai needs to load the folder and generate."""

from __future__ import annotations

from typing import Any

from ...model.spec import ModelSpec
from .kv_cache import WINDOW_CACHE_SLACK


def genai_config(spec: ModelSpec, filename: str = "model.onnx", threads: int | None = None) -> dict[str, Any]:
    """Sliding layers hold window-sized KV buffers (GroupQueryAttention sliding_window_cache): the
    `sliding_window` section tells genai which layers and how many rows (window + cache_slack; one size, the
    largest window, which every sliding layer's kernel accepts since capacity >= its own window). Full layers
    keep max_length buffers shared between past and present. Both families run as genai's decoder-only
    "qwen2" pipeline: genai only drives the graph I/O, the MoE blocks are inside the graph."""
    eos = list(spec.eos_token_id)
    session_options: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads:
        session_options["intra_op_num_threads"] = threads
    config = {
        "model": {
            "bos_token_id": spec.bos_token_id if spec.bos_token_id is not None else (eos[0] if eos else 0),
            "context_length": spec.max_position_embeddings,
            "decoder": {
                "session_options": session_options,
                "filename": filename,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": spec.pad_token_id if spec.pad_token_id is not None else (eos[0] if eos else 0),
            "type": "qwen2",
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": spec.max_position_embeddings,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    sliding = [i for i, w in enumerate(spec.windows) if w is not None]
    if sliding:
        config["model"]["decoder"]["sliding_window"] = {
            "window_size": spec.max_window,
            "slide_key_value_cache": False,
            "slide_inputs": False,
            "layers": sliding,
            "cache_slack": WINDOW_CACHE_SLACK,
        }
    return config
