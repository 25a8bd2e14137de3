"""Property-based tests of the config reader: valid configs agree with transformers; garbage never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen2_edge.errors import UserError
from qwen2_edge.model.families import transformers_class
from qwen2_edge.model.spec import MoEFFN, spec_from_dict

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: conftest profile


@st.composite
def valid_configs(draw):
    moe = draw(st.booleans())
    layers = draw(st.integers(1, 8))
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.integers(1, 4))
    cfg = {
        "architectures": ["Qwen2MoeForCausalLM" if moe else "Qwen2ForCausalLM"],
        "vocab_size": draw(st.integers(8, 512)),
        "hidden_size": heads * draw(st.sampled_from([4, 8, 16])),
        "intermediate_size": draw(st.integers(1, 256)),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "use_sliding_window": draw(st.booleans()),
        "sliding_window": draw(st.integers(1, 64)),
        "max_window_layers": draw(st.integers(0, layers + 1)),
        "tie_word_embeddings": draw(st.booleans()),
    }
    if draw(st.booleans()):
        cfg["layer_types"] = draw(
            st.lists(
                st.sampled_from(["full_attention", "sliding_attention"]), min_size=layers, max_size=layers
            )
        )
        cfg["use_sliding_window"] = True
    if moe:
        experts = draw(st.integers(1, 8))
        cfg.update(
            num_experts=experts,
            num_experts_per_tok=draw(st.integers(1, experts)),
            moe_intermediate_size=draw(st.integers(1, 64)),
            shared_expert_intermediate_size=draw(st.integers(0, 64)),
            decoder_sparse_step=draw(st.integers(1, 3)),
            mlp_only_layers=draw(st.lists(st.integers(0, layers - 1), unique=True, max_size=layers)),
            norm_topk_prob=draw(st.booleans()),
        )
    return cfg


@SETTINGS
@given(valid_configs())
def test_valid_configs_match_transformers(cfg):
    spec = spec_from_dict(cfg)
    family = spec.family_row
    hf_cfg = transformers_class(family.config_class).from_dict(cfg)
    assert [w is not None for w in spec.windows] == [t == "sliding_attention" for t in hf_cfg.layer_types]
    for layer in spec.layers:
        if family.name == "qwen2moe":
            i = layer.index
            is_moe = (
                i not in hf_cfg.mlp_only_layers
                and hf_cfg.num_experts > 0
                and (i + 1) % hf_cfg.decoder_sparse_step == 0
            )
            assert isinstance(layer.ffn, MoEFFN) == is_moe
        else:
            assert not isinstance(layer.ffn, MoEFFN)
    assert spec.head_dim * spec.num_heads == spec.hidden_size


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def test_architectures_must_be_class_names():
    """Found by Hypothesis (seed 13): a list of lists as `architectures` was a TypeError traceback."""
    with pytest.raises(UserError, match="'architectures' must be a list of class names"):
        spec_from_dict({"architectures": [["Qwen2ForCausalLM"]]})


@SETTINGS
@given(valid_configs(), st.data())
def test_corrupted_configs_raise_only_user_errors(cfg, data):
    key = data.draw(st.sampled_from(sorted(cfg)))
    mutation = data.draw(st.sampled_from(["delete", "replace"]))
    if mutation == "delete":
        del cfg[key]
    else:
        cfg[key] = data.draw(json_values)
    json.dumps(cfg)  # stays a JSON document
    try:
        spec = spec_from_dict(cfg)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert spec.num_layers == len(spec.layers)
