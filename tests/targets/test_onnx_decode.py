"""The ONNX Runtime decode graph (`explorer.targets.onnx_decode`): one token after a 128-token
KV cache gives the logits the cache-free prefill graph gives at position 129 (float: within 1e-4
of the logit scale, max |logit|, on a GQA Llama and a GPT-2); a W8A8-dynamic decode graph holds
the evaluated graph's codes bit for bit and agrees with its own prefill graph and with the native
quantized model's decode step; a cache it cannot export leaves decode untimed with the reason."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from tasks.builders import tiny_llama  # noqa: E402

from explorer.models.hf_workloads import cache_argument, returned_cache  # noqa: E402
from explorer.nn.convert import quantize_model  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.targets import get_target  # noqa: E402
from explorer.targets.onnx_decode import DecodeGraph  # noqa: E402
from explorer.targets.onnxruntime import OnnxRuntimeTarget  # noqa: E402

W8A8_DYNAMIC = QuantConfig(
    weight_bits=8, act_bits=8, act_mode="dynamic", act_granularity="tensor", act_symmetric=False
)
VOCAB = 256
# float32 graphs against each other and against float64: 1e-4 of the largest logit
FLOAT_RTOL = 1e-4


def sqnr_db(ref: np.ndarray | torch.Tensor, x: np.ndarray | torch.Tensor) -> float:
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    return float(10 * np.log10((ref**2).sum() / max(((ref - x) ** 2).sum(), 1e-300)))


def gpt2() -> nn.Module:
    """Two GPT-2 blocks at width 64 (learned positions, Conv1D projections)."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def target() -> OnnxRuntimeTarget:
    return get_target("onnxruntime", threads=1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    """129 token ids: a 128-token prompt and the token decoded after it."""
    return torch.randint(0, VOCAB, (1, 129), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("make", "kv_heads"), [(lambda: tiny_llama(VOCAB), 2), (gpt2, 4)], ids=["llama-gqa", "gpt2"]
)
def test_float_decode_step_matches_prefill(
    make, kv_heads: int, target: OnnxRuntimeTarget, tokens: torch.Tensor
) -> None:
    model = make()
    art = target.build(model, tokens)
    assert art.untimed == {} and set(art.workloads) == {"prefill", "decode"}
    graph = art.workloads["decode"].graph
    prefill = art.runner(tokens).numpy()  # (1, 129, V), the cache-free graph
    tol = FLOAT_RTOL * float(np.abs(prefill).max())
    # the prompt through the decode graph on an empty cache, then one token on its 128
    first, past = graph.run(tokens[:, :128].numpy())
    assert {p.shape for p in past} == {(1, kv_heads, 128, 16)}
    logits, present = graph.run(tokens[:, 128:].numpy(), past)
    assert len(present) == 2 * 2 and present[0].shape[2] == 129
    assert np.abs(first[0] - prefill[0, :128]).max() <= tol
    assert np.abs(logits[0, -1] - prefill[0, -1]).max() <= tol
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(input_ids=tokens, use_cache=False).logits[0, -1]
    assert np.abs(logits[0, -1] - ref.numpy()).max() <= tol
    # the timed workload: the prompt's greedy next token on its cache, every call the same
    step = art.workloads["decode"]
    greedy = torch.cat([tokens[:, :128], torch.from_numpy(first[:, -1:].argmax(-1))], dim=1)
    want = art.runner(greedy).numpy()[0, -1]
    for _ in range(2):
        assert np.abs(step()[0, -1] - want).max() <= tol


def test_w8_dynamic_decode_is_the_evaluated_model(
    target: OnnxRuntimeTarget, tokens: torch.Tensor, tmp_path: Path
) -> None:
    calib = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(2))
    qmodel = quantize_model(tiny_llama(VOCAB), Plan.uniform(W8A8_DYNAMIC), calib)
    art = target.build(qmodel, tokens)
    step = art.workloads["decode"]
    graph = step.graph

    def codes(payload: bytes) -> dict[str, np.ndarray]:
        model = onnx.load_from_string(payload)
        keep = (".qweight", ".scale", ".zero")
        return {
            t.name: numpy_helper.to_array(t)
            for t in model.graph.initializer
            if t.name.endswith(keep)
        }

    evaluated, decoded = codes(art.payload), codes(graph.payload)
    assert len(decoded) == 3 * (2 * 7 + 1) and decoded.keys() == evaluated.keys()
    for name, array in decoded.items():
        assert array.dtype == evaluated[name].dtype
        np.testing.assert_array_equal(array, evaluated[name], err_msg=name)

    _, past = graph.run(tokens[:, :128].numpy())
    logits = graph.run(tokens[:, 128:].numpy(), past)[0][0, -1]
    # one token's per-tensor activation scale against 129 tokens' (measured 36.8 dB)
    assert sqnr_db(art.runner(tokens)[0, -1], logits) >= 30.0
    with torch.inference_mode():
        out = qmodel(input_ids=tokens[:, :128], use_cache=True)
        cache = {cache_argument(qmodel): returned_cache(out)}
        native = qmodel(input_ids=tokens[:, 128:], use_cache=True, **cache).logits[0, -1]
    # the same codes and the same one-token scales: summation order only (measured 148 dB)
    assert sqnr_db(native, logits) >= 60.0
    # the export holds the decode graph too; a fresh session gives the same logits
    exported = target.export_recipe(art, tmp_path)["decode_onnx"].read_bytes()
    assert exported == graph.payload
    fresh = DecodeGraph(target, exported, graph.layout)
    np.testing.assert_array_equal(fresh.run(tokens[:, 128:].numpy(), past)[0][0, -1], logits)
    # the row times this call; ORT's profiler maps the decode graph's nodes to every layer
    assert step().shape == (1, 1, VOCAB)
    report = target.layer_report(art, step, repeats=1)
    assert all(lay["latency_ms"] > 0 for lay in report.values()), report
    assert {lay["kernel"] for lay in report.values()} == {"DynamicQuantizeMatMul"}


def test_sliding_window_cache_leaves_decode_untimed(
    target: OnnxRuntimeTarget, tokens: torch.Tensor
) -> None:
    config = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=16,
    )
    torch.manual_seed(0)
    art = target.build(transformers.MistralForCausalLM(config).eval(), tokens)
    assert set(art.workloads) == {"prefill"}
    assert art.untimed == {
        "decode": "no decode graph: MistralForCausalLM's KV cache has DynamicSlidingWindowLayer "
        "layers; only full-attention DynamicLayer caches export with a free past length"
    }
