"""Required evidence on the embedded teacher: int4 GPTQ is closer to the float model than int4 RTN.

Both at block 32 (the GGUF Q4_0 / MatMulNBits layout), same policy, measured as mean KL divergence of the
next-token distribution to the float transformers model on held-out text (never calibrated on).
"""

from __future__ import annotations

import pytest
import torch

from qwen2_edge.data.corpus import heldout_text
from qwen2_edge.model.builtin import BUILTINS
from qwen2_edge.model.checkpoint import open_checkpoint
from qwen2_edge.model.tokenizer import TextTokenizer
from qwen2_edge.quant import QuantScheme, quantize_model
from qwen2_edge.quant.apply import apply_quantized
from qwen2_edge.runtimes.reference import load_reference_model
from qwen2_edge.validation.metrics import mean_kld

pytestmark = pytest.mark.skipif(
    not (BUILTINS["teacher"] / "config.json").is_file(), reason="built-in teacher not in this checkout"
)


@torch.no_grad()
def test_teacher_int4_gptq_has_lower_kld_than_rtn():
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on shared CI cores
    ckpt = open_checkpoint("builtin:teacher")
    ids = torch.tensor(TextTokenizer(ckpt.path).encode(heldout_text())[:1024]).reshape(2, 512)
    model = load_reference_model(ckpt)
    ref = torch.cat([model(input_ids=s[None]).logits[0] for s in ids])
    scheme = QuantScheme(4, 32)
    klds = {}
    for method, kw in (("rtn", {}), ("gptq", {"calib_tokens": 2048, "progress": False})):
        q = quantize_model(ckpt, scheme, "default", method=method, **kw)
        m = load_reference_model(ckpt)
        apply_quantized(m, q.tensors)
        klds[method] = mean_kld(ref, torch.cat([m(input_ids=s[None]).logits[0] for s in ids]))
    print(f"teacher int4 b32 mean KLD to float: rtn {klds['rtn']:.6g}, gptq {klds['gptq']:.6g}")
    assert klds["gptq"] < klds["rtn"]
