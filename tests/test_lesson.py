"""The Learn page's computations (`explorer.lesson`) and the Export page's bundle
(`explorer.bundle`), checked against float64 references and the engine's own code."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from explorer.bundle import (
    BUNDLE_FILES,
    BundleError,
    build_row_model,
    export_bundle,
    plan_document,
    plan_json,
    row_snippet,
    zip_bundle,
)
from explorer.cli import read_plan_file
from explorer.errors import ExplorerError, QuantConfigError
from explorer.lesson import (
    LessonError,
    compare_granularities,
    fake_vs_real,
    kernel_options,
    layer_inputs,
    layer_names,
    layer_weights,
    lesson,
    sqnr_by_bits,
)
from explorer.nn.convert import as_linear, quant_modules
from explorer.quant.config import Plan, QuantConfig
from explorer.quant.primitives import qrange
from explorer.quant.qtensor import QuantizedWeight
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.export import WEIGHTS_FILE, load_export

DIGITS_LAYERS = ["features.1", "features.3", "features.5", "classifier.2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a second intra-op thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


def gaussian(n: int = 64, k: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def channel_varying(n: int = 64, k: int = 256) -> torch.Tensor:
    """Rows whose ranges span two decades, as in real layers with a few loud channels."""
    return gaussian(n, k) * torch.logspace(-2, 0, n)[:, None]


# --- the layer's weights ------------------------------------------------------------------------


def test_layer_weights_are_the_folded_2d_weights(ctx: ModelContext) -> None:
    assert layer_names(ctx) == DIGITS_LAYERS
    for name in DIGITS_LAYERS:
        w = layer_weights(ctx, name)
        folded = as_linear(ctx.folded.get_submodule(name)).weight
        assert w.dim() == 2 and w.dtype == torch.float32
        assert torch.equal(w, folded.detach().reshape(folded.shape[0], -1))
    assert layer_weights(ctx, "features.3").shape == (64, 32 * 2 * 2)
    # a plain model works too, as given
    assert torch.equal(
        layer_weights(ctx.model, "classifier.2"), ctx.model.classifier[2].weight.detach()
    )


def test_unknown_layer_is_an_explorer_error(ctx: ModelContext) -> None:
    with pytest.raises(ExplorerError, match="no quantizable layer 'features.2'"):
        layer_weights(ctx, "features.2")
    with pytest.raises(ExplorerError, match="no quantizable layer"):
        fake_vs_real(ctx, "nope", QuantConfig())


# --- one lesson ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "granularity,group_size,channel",
    [("tensor", None, None), ("tensor", None, 5), ("channel", None, 7), ("group", 32, 3)],
)
def test_grid_is_exactly_scale_times_code_minus_zero(
    bits: int, symmetric: bool, granularity: str, group_size: int | None, channel: int | None
) -> None:
    w = channel_varying()
    out = lesson(w, bits, granularity, group_size, symmetric, channel=channel, group=2)
    qmin, qmax = qrange(bits, symmetric)
    codes = range(qmin, qmax + 1)
    assert out["levels"] == 2**bits == len(out["grid"])
    assert out["grid"] == [out["scale"] * (q - out["zero"]) for q in codes]  # float64, exact
    assert out["clip"] == [out["grid"][0], out["grid"][-1]]
    assert out["step"] == out["scale"] > 0
    assert out["grid"][0] <= 0.0 <= out["grid"][-1]  # 0 is always representable
    if symmetric:
        assert out["zero"] == 0

    # the engine stores the same numbers: the lesson's dequantized weights are the stored
    # weight's, and each lies on the grid (up to the float32 rounding of scale * (q - z))
    config = QuantConfig(
        weight_bits=bits, granularity=granularity, group_size=group_size, symmetric=symmetric
    )
    stored = QuantizedWeight.from_float(w, config).dequantize()
    row = 0 if channel is None else channel
    if granularity == "group":
        expected = stored[row, 64:96]
    elif channel is None:
        expected = stored.reshape(-1)
    else:
        expected = stored[row]
    assert torch.equal(torch.from_numpy(out["dequantized"]), expected.double())
    grid32 = torch.tensor(out["grid"], dtype=torch.float64).float().double()
    assert bool(torch.isin(torch.from_numpy(out["dequantized"]), grid32).all())
    # error = dequantized - original (float64; the engine rounds the product to float32)
    weights = torch.from_numpy(out["weights"])
    error = torch.from_numpy(out["error"])
    dequantized = torch.from_numpy(out["dequantized"])
    assert torch.allclose(error, dequantized - weights, rtol=0, atol=1e-6 * out["clip"][1])
    inside = (weights >= out["clip"][0]) & (weights <= out["clip"][1])
    assert bool((error[inside].abs() <= out["step"] / 2 * (1 + 1e-5)).all())
    assert bool((error[~inside].abs() > 0).all())


def test_group_lesson_shows_only_the_group_on_its_grid() -> None:
    w = channel_varying()
    out = lesson(w, 4, "group", 32, channel=3, group=1, name="fc")
    assert out["shown_count"] == 32 and len(out["weights"]) == 32
    assert torch.equal(torch.from_numpy(out["weights"]), w[3, 32:64].double())
    assert out["title"].startswith("fc · channel 3, group 1 (32 weights)")
    assert out["channel"] == 3 and out["group"] == 1 and out["granularity"] == "group32"


def test_whole_tensor_is_subsampled_for_the_histogram() -> None:
    w = gaussian(256, 1024)
    out = lesson(w, 8, "tensor")
    assert out["shown_count"] == w.numel()
    assert 10_000 < len(out["weights"]) <= 20_000
    assert len(out["error"]) == len(out["weights"])
    assert out["channel"] is None and "all 262,144 weights" in out["title"]


def test_sqnr_gains_about_six_db_per_bit_on_gaussian_weights() -> None:
    w = gaussian(256, 1024)
    by_bits = {r["bits"]: r["sqnr_db"] for r in sqnr_by_bits(w, bits=(4, 6, 8))}
    assert 20.0 <= by_bits[8] - by_bits[4] <= 28.0
    assert 10.0 <= by_bits[6] - by_bits[4] <= 14.0
    assert lesson(w, 8, "channel")["sqnr_db"] == pytest.approx(by_bits[8])
    # float64 reference of the whole-weight SQNR
    config = QuantConfig(weight_bits=4)
    deq = QuantizedWeight.from_float(w, config).dequantize().double()
    ref = 10 * math.log10((w.double() ** 2).sum().item() / ((deq - w.double()) ** 2).sum().item())
    assert lesson(w, 4, "channel")["sqnr_db"] == pytest.approx(ref, abs=1e-9)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ() -> None:
    w = channel_varying()
    rows = {r["name"]: r for r in compare_granularities(w, 4)}
    assert list(rows) == ["tensor", "channel", "group32", "group128"]
    assert rows["channel"]["sqnr_db"] >= rows["tensor"]["sqnr_db"] + 6.0
    assert rows["group32"]["sqnr_db"] >= rows["channel"]["sqnr_db"]
    for name, r in rows.items():
        g, size = r["granularity"], r["group_size"]
        config = QuantConfig(weight_bits=4, granularity=g, group_size=size)
        assert r["bytes"] == QuantizedWeight.from_float(w, config).nbytes, name
        assert r["bits_per_weight"] == pytest.approx(8 * r["bytes"] / w.numel())
    assert rows["tensor"]["scales"] == 1 and rows["channel"]["scales"] == 64
    assert rows["tensor"]["bytes"] < rows["channel"]["bytes"] < rows["group32"]["bytes"]
    # where a group size does not divide the rows it is left out
    assert [r["name"] for r in compare_granularities(gaussian(8, 96), 4)] == [
        "tensor",
        "channel",
        "group32",
    ]


def test_clipping_calibrations_clip_a_few_weights() -> None:
    w = gaussian(256, 1024)
    w[0, 0] = 40.0  # one outlier
    minmax = lesson(w, 4, "tensor", calibration="minmax")
    percentile = lesson(w, 4, "tensor", calibration="percentile")
    mse = lesson(w, 4, "tensor", calibration="mse")
    assert minmax["clipped_share"] == 0.0
    assert 0.0 < percentile["clipped_share"] < 0.001
    assert 0.0 < mse["clipped_share"] < 0.01
    # clipping the outlier buys a finer step for everyone else
    assert percentile["step"] < minmax["step"] / 4
    assert percentile["sqnr_db"] > minmax["sqnr_db"]
    assert percentile["range"][1] < 40.0 and minmax["range"][1] == 40.0


def test_lesson_rejects_bad_settings_with_a_message() -> None:
    w = gaussian(8, 96)
    with pytest.raises(QuantConfigError, match="group size 64 does not divide in_features 96"):
        lesson(w, 4, "group", 64)
    with pytest.raises(LessonError, match="channel 8 is out of range"):
        lesson(w, 4, "channel", channel=8)
    with pytest.raises(LessonError, match="group 3 is out of range"):
        lesson(w, 4, "group", 32, group=3)
    with pytest.raises(QuantConfigError, match="weight_bits"):
        lesson(w, 9, "channel")
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ExplorerError, match="non-finite"):
        lesson(bad, 4, "channel")


# --- fake quantization against the real kernel --------------------------------------------------


def test_layer_inputs_are_what_the_layer_sees(ctx: ModelContext) -> None:
    x = layer_inputs(ctx, "classifier.2", 8)
    assert x.shape == (8, 512)
    expected = ctx.folded.features(ctx.calibration_inputs(8)).flatten(1)
    assert torch.allclose(x, expected)
    assert layer_inputs(ctx, "features.1", 8).shape == (8, 1, 11, 11)  # after ZeroPad2d


FAKE_VS_REAL = {
    "w8-channel": QuantConfig(weight_bits=8),
    "w8a8-dynamic": QuantConfig(weight_bits=8, act_bits=8, act_granularity="token"),
    "w8a8-static": QuantConfig(
        weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor"
    ),
    "w4-g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
}


@pytest.mark.parametrize(
    "layer,config",
    [
        pytest.param(layer, config, id=f"{layer}-{name}")
        for layer in DIGITS_LAYERS
        for name, config in FAKE_VS_REAL.items()
        if not (layer == "features.1" and config.granularity == "group")  # 16 inputs
    ],
)
def test_fake_and_real_agree_to_rounding_order(
    ctx: ModelContext, layer: str, config: QuantConfig
) -> None:
    out = fake_vs_real(ctx, layer, config, rows=8)
    assert out["samples"] == 8 and out["config"] == config.name
    # bf16 kernels round activations to bf16 (8 significant bits): the same function to ~3 digits
    bound = 1e-2 if out["kernel"].endswith("-bf16") else 1e-3
    assert out["rel_diff"] < bound, out
    assert out["max_abs_diff"] <= bound * out["max_abs_output"]
    # both are far closer to each other than to float
    assert out["fake_vs_real_sqnr_db"] > out["sqnr_real_db"] + 3.0
    assert abs(out["sqnr_fake_db"] - out["sqnr_real_db"]) < 1.5
    assert out["sqnr_fake_db"] > (35.0 if config.weight_bits == 8 else 15.0)


def test_fake_vs_real_on_a_chosen_kernel_and_without_a_real_kernel(ctx: ModelContext) -> None:
    w8a8 = QuantConfig(weight_bits=8, act_bits=8)
    first = fake_vs_real(ctx, "features.5", w8a8)
    assert not first["simulated"] and first["kernel"] in first["candidates"]
    assert kernel_options(ctx, "features.5", w8a8) == first["candidates"]
    assert kernel_options(ctx, "features.5", QuantConfig(weight_bits=5)) == []
    for kernel in first["candidates"]:
        out = fake_vs_real(ctx, "features.5", w8a8, kernel=kernel)
        assert out["kernel"] == kernel and out["rel_diff"] < 1e-3
    ref = fake_vs_real(ctx, "features.5", w8a8, kernel="reference")
    assert ref["simulated"] and ref["rel_diff"] < 1e-5
    # 5 bits has no real kernel: the layer runs the float reference, which is the fake path
    w5 = fake_vs_real(ctx, "features.5", QuantConfig(weight_bits=5))
    assert w5["simulated"] and w5["candidates"] == [] and w5["rel_diff"] < 1e-5
    with pytest.raises(LessonError, match="cannot run this layer"):
        fake_vs_real(ctx, "features.5", QuantConfig(weight_bits=5), kernel="int8-wo-native")
    with pytest.raises(QuantConfigError, match="group size 32 does not divide in_features 16"):
        fake_vs_real(
            ctx, "features.1", QuantConfig(weight_bits=4, granularity="group", group_size=32)
        )
    with pytest.raises(QuantConfigError, match="weight bits"):
        fake_vs_real(ctx, "features.1", QuantConfig.float())


# --- the export bundle --------------------------------------------------------------------------


def row_for(plan: Plan, **extra: object) -> dict[str, object]:
    return {
        "config": plan.to_dict(),
        "qat_steps": None,
        "qat_lr": None,
        "model": "digits-cnn",
        **extra,
    }


@pytest.mark.parametrize(
    "plan",
    [
        Plan.uniform(QuantConfig(weight_bits=8, act_bits=8)),
        Plan.uniform(QuantConfig(weight_bits=4, granularity="group", group_size=32)),
        Plan(default=QuantConfig(), rules=(("features.1", None),)),
    ],
    ids=["w8a8", "w4-g32", "mixed"],
)
def test_bundle_weights_reload_to_identical_outputs(
    ctx: ModelContext, plan: Plan, tmp_path: Path
) -> None:
    row = row_for(plan)
    files = export_bundle(ctx, row, tmp_path / "export")
    assert set(files) == set(BUNDLE_FILES)
    # only the downloaded safetensors file: it carries its own plan in its metadata
    download = tmp_path / "download" / WEIGHTS_FILE
    download.parent.mkdir()
    download.write_bytes(files[WEIGHTS_FILE])
    loaded = load_export(ctx.model, download)
    built = build_row_model(ctx, row)
    x = ctx.eval_split[0][:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), built(x))
    assert json.loads(files["plan.json"])["plan"] == plan.to_dict()
    assert b"load_export" in files["reapply.py"]
    # the zip of the whole bundle unpacks to a folder that loads the same
    with zipfile.ZipFile(io.BytesIO(zip_bundle(files))) as archive:
        archive.extractall(tmp_path / "unzipped")
    unzipped = load_export(ctx.model, tmp_path / "unzipped" / "export")
    with torch.no_grad():
        assert torch.equal(unzipped(x), built(x))


def test_bundle_uses_the_rows_kernels_and_reexports_in_place(
    ctx: ModelContext, tmp_path: Path
) -> None:
    plan = Plan.uniform(QuantConfig(weight_bits=8, act_bits=8))
    row = row_for(plan, kernels={"features.5": "int8-w8a8-intmm", "classifier.2": "no-such"})
    export_bundle(ctx, row, tmp_path / "export")
    files = export_bundle(ctx, row, tmp_path / "export")  # the same folder again: replaced
    layers = json.loads(files["plan.json"])["layers"]
    assert layers["features.5"]["kernel"] == "int8-w8a8-intmm"
    assert layers["classifier.2"]["kernel"] != "no-such"
    model = build_row_model(ctx, row)
    assert quant_modules(model)["features.5"].kernel_name == "int8-w8a8-intmm"


def test_bundle_of_a_qat_row(ctx: ModelContext, tmp_path: Path) -> None:
    plan = Plan.uniform(QuantConfig(weight_bits=4, method="qat"))
    row = row_for(plan, qat_steps=2, qat_lr=1e-3)
    files = export_bundle(ctx, row, tmp_path / "export")
    doc = json.loads(files["plan.json"])
    assert doc["method"] == "qat"
    loaded = load_export(ctx.model, tmp_path / "export")
    assert set(quant_modules(loaded)) == set(DIGITS_LAYERS)


def test_plan_document_reads_back_with_the_cli(tmp_path: Path) -> None:
    plan = Plan.uniform(QuantConfig(weight_bits=4, method="qat"))
    row = row_for(plan, qat_steps=30, qat_lr=5e-4, label="W4 qat")
    doc = plan_document(row)
    assert doc["qat_steps"] == 30 and doc["label"] == "W4 qat"
    path = tmp_path / "plan.json"
    path.write_bytes(plan_json(row))
    assert read_plan_file(str(path)) == (plan, 30, 5e-4)


def test_bundle_refuses_rows_without_a_plan(ctx: ModelContext, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no plan"):
        export_bundle(ctx, {"label": "x"}, tmp_path / "export")
    with pytest.raises(ExplorerError):
        plan_document(row_for(Plan.uniform(QuantConfig(weight_bits=4, method="qat"))))
    snippet = row_snippet(ctx, row_for(Plan.uniform(QuantConfig())))
    assert "MODEL_REF = {'model': 'digits-cnn'}" in snippet
    compile(snippet, "reapply.py", "exec")
