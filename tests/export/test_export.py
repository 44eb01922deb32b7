"""Export round trips: what `load_export` rebuilds computes exactly what was exported."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from explorer.errors import ExplorerError, ModelLoadError, QuantConfigError
from explorer.export import (
    METADATA_KEY,
    ExportError,
    export_quantized,
    load_export,
    read_export_plan,
    snippet,
)
from explorer.export import write as export_write
from explorer.kernels.select import candidates
from explorer.measure.size import safetensors_payload_bytes, size_bytes
from explorer.models.registry import get_builtin
from explorer.nn.convert import quant_modules, quantize_model
from explorer.nn.qat import convert, prepare_qat
from explorer.quant.config import Plan, QuantConfig

REPO = Path(__file__).resolve().parents[2]
DIGITS = {"model": "digits-cnn"}
W8 = QuantConfig()
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
W8A8_STATIC = QuantConfig(act_bits=8, act_mode="static", act_granularity="tensor")
W3 = QuantConfig(weight_bits=3)
MIXED = Plan(
    default=W8,
    rules=(
        ("features.1", None),
        ("classifier.2", QuantConfig.float("bf16")),
        ("features.5", QuantConfig(weight_bits=4, granularity="group", group_size=32)),
    ),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a second intra-op thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor]:
    spec = get_builtin("digits-cnn")
    images, _ = spec.load_split("eval")
    return spec.load(), images[:128]


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)
    ).eval()


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def rewrite_weights(path: Path, tensors: dict[str, torch.Tensor], doc: dict | None = None) -> None:
    """Save ``tensors`` over an export's weights, keeping (or replacing) its plan metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    if doc is not None:
        metadata = {METADATA_KEY: json.dumps(doc, indent=2, sort_keys=True) + "\n"}
    save_file(tensors, str(path), metadata=metadata)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [Plan.uniform(W8), Plan.uniform(W4G32), Plan.uniform(W8A8_STATIC), MIXED, Plan.uniform(W3)],
    ids=["w8-channel", "w4-group32", "w8a8-static", "mixed", "w3"],
)
def test_round_trip_digits_is_exact(digits, plan: Plan, tmp_path: Path) -> None:
    model, images = digits
    before = state_copy(model)
    quantized = quantize_model(model, plan, calibration_data=images[:64])
    result = export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    loaded = load_export(model, result.folder)

    with torch.no_grad():
        assert torch.equal(loaded(images), quantized(images))
    assert not loaded.training
    assert loaded.quant_report.fallbacks == quantized.quant_report.fallbacks
    assert {n: m.kernel_name for n, m in quant_modules(loaded).items()} == {
        n: m.kernel_name for n, m in quant_modules(quantized).items()
    }
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_round_trip_mlp_asymmetric_groups(tmp_path: Path) -> None:
    model = make_mlp()
    plan = Plan.uniform(
        QuantConfig(weight_bits=4, granularity="group", group_size=16, symmetric=False)
    )
    quantized = quantize_model(model, plan)
    assert any(hasattr(m, "zero") for m in quant_modules(quantized).values())
    x = torch.randn(32, 24, generator=torch.Generator().manual_seed(1))
    export_quantized(quantized, plan, tmp_path / "mlp", model_ref={"factory": "tests:mlp"})

    loaded = load_export(make_mlp(), tmp_path / "mlp")

    assert torch.equal(loaded(x), quantized(x))


def make_bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, 10),
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("fold_bn", [True, False], ids=["folded", "unfolded"])
def test_round_trip_with_batch_norm(fold_bn: bool, tmp_path: Path) -> None:
    plan = Plan.uniform(W8)
    quantized = quantize_model(make_bn_cnn(), plan, fold_bn=fold_bn)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    export_quantized(quantized, plan, tmp_path / "bn", model_ref={"factory": "t:cnn"})

    loaded = load_export(make_bn_cnn(), tmp_path / "bn")

    assert loaded.quant_report.folded == (["0"] if fold_bn else [])
    assert torch.equal(loaded(x), quantized(x))


def test_round_trip_from_the_weights_file_alone(digits, tmp_path: Path) -> None:
    model, images = digits
    quantized = quantize_model(model, MIXED)
    result = export_quantized(quantized, MIXED, tmp_path / "export", model_ref=DIGITS)
    (result.plan_path).unlink()

    loaded = load_export(model, result.weights_path)

    assert torch.equal(loaded(images), quantized(images))


def test_group_fallback_is_recorded(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W4G32)
    quantized = quantize_model(model, plan)
    result = export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    plan_back, doc = read_export_plan(result.folder)

    assert plan_back == plan
    first = doc["layers"]["features.1"]  # in_features 1 * 4 * 4 = 16: 32 does not divide it
    assert "per-channel" in first["fallback"]
    assert first["config"]["granularity"] == "channel"
    # the kernel the quantized layer runs is the one recorded (K = 16 is zero-padded to 32 for
    # the int4 kernels, so the fallback layer runs a real kernel, not the reference)
    assert first["kernel"] == quantized.get_submodule("features.1").kernel_name != "reference"
    assert doc["layers"]["features.3"]["fallback"] is None
    assert doc["layers"]["features.3"]["config"] == W4G32.to_dict()
    assert doc["model"] == DIGITS and doc["method"] == "ptq" and doc["version"] == 1
    assert doc["torch"] == torch.__version__


@pytest.mark.parametrize("learn_scales", [False, True], ids=["recomputed", "lsq"])
def test_qat_export_reloads_its_own_codes(digits, learn_scales: bool, tmp_path: Path) -> None:
    model, images = digits
    plan = Plan.uniform(QuantConfig(weight_bits=4, method="qat", learn_scales=learn_scales))
    qat = prepare_qat(model, plan)
    opt = torch.optim.Adam([p for p in qat.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(qat(x), y).backward()
        opt.step()
    trained = convert(qat)
    ptq = quantize_model(model, plan)
    assert any(
        not torch.equal(a.qweight, b.qweight)
        for a, b in zip(quant_modules(trained).values(), quant_modules(ptq).values(), strict=True)
    )

    export_quantized(trained, plan, tmp_path / "qat", model_ref=DIGITS, method="qat")
    loaded = load_export(model, tmp_path / "qat")

    out = loaded(images)
    assert torch.equal(out, trained(images))
    assert not torch.equal(out, ptq(images))
    assert read_export_plan(tmp_path / "qat")[1]["method"] == "qat"


def test_size_is_bytes_as_stored(digits, tmp_path: Path) -> None:
    model, _ = digits
    quantized = quantize_model(model, MIXED)
    result = export_quantized(quantized, MIXED, tmp_path / "export", model_ref=DIGITS)

    _, doc = read_export_plan(result.folder)

    assert doc["size_bytes"] == result.size_bytes == size_bytes(quantized)
    assert safetensors_payload_bytes(result.weights_path) == size_bytes(quantized)
    with safe_open(str(result.weights_path), framework="pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == doc


# --- kernels -------------------------------------------------------------------------------------


def test_kernel_names_are_restored(digits, tmp_path: Path) -> None:
    model, images = digits
    plan = Plan.uniform(W8)
    quantized = quantize_model(model, plan)
    layer = quant_modules(quantized)["features.3"]
    default = layer.kernel_name
    other = "int8-wo-int8pack-bf16" if default != "int8-wo-int8pack-bf16" else "reference"
    layer.use_kernel(other)
    export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    loaded = load_export(model, tmp_path / "export")

    assert quant_modules(loaded)["features.3"].kernel_name == other
    assert loaded.export_notes == {}
    assert torch.equal(loaded(images), quantized(images))


def test_convolution_kernel_names_are_restored(digits, tmp_path: Path) -> None:
    """A convolution's kernel (they have a registry of their own) comes back as exported."""
    from explorer.kernels import conv_ops

    if conv_ops.unavailable_reason() or not conv_ops.conv_isa_supported("avx2"):
        pytest.skip("int8-conv-native needs the convolution library and avx2")
    model, images = digits
    plan = Plan.uniform(QuantConfig(weight_bits=8, act_bits=8))
    quantized = quantize_model(model, plan)
    layer = quant_modules(quantized)["features.3"]
    layer.use_kernel(conv_ops.CONV_A8.name)
    export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    loaded = load_export(model, tmp_path / "export")

    assert quant_modules(loaded)["features.3"].kernel_name == conv_ops.CONV_A8.name
    assert loaded.export_notes == {}
    assert torch.equal(loaded(images), quantized(images))


def test_unavailable_kernel_keeps_the_default_and_says_so(digits, tmp_path: Path) -> None:
    model, images = digits
    plan = Plan.uniform(W8)
    quantized = quantize_model(model, plan)
    result = export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)
    _, doc = read_export_plan(result.folder)
    doc["layers"]["features.3"]["kernel"] = "int8-from-the-future"
    result.plan_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    rewrite_weights(result.weights_path, load_file(str(result.weights_path)), doc)

    loaded = load_export(model, result.folder)

    assert "int8-from-the-future" in loaded.export_notes["features.3"]
    assert quant_modules(loaded)["features.3"].kernel_name == (
        quant_modules(quantized)["features.3"].kernel_name
    )
    assert torch.equal(loaded(images), quantized(images))


def test_example_input_selects_kernels(digits, tmp_path: Path) -> None:
    model, images = digits
    plan = Plan.uniform(W8)
    quantized = quantize_model(model, plan)
    export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    loaded = load_export(model, tmp_path / "export", example_input=images[:8])

    chosen = {n: m.kernel_name for n, m in quant_modules(loaded).items()}
    for name, layer in quant_modules(quantized).items():
        assert chosen[name] in [k.name for k in candidates(layer.spec)]
        layer.use_kernel(chosen[name])
    assert torch.equal(loaded(images), quantized(images))


# --- errors --------------------------------------------------------------------------------------


def test_refuses_non_empty_folder_unless_overwrite(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    quantized = quantize_model(model, plan)
    target = tmp_path / "export"
    export_quantized(quantized, plan, target, model_ref=DIGITS)

    with pytest.raises(ExportError, match="not empty"):
        export_quantized(quantized, plan, target, model_ref=DIGITS)
    w4 = quantize_model(model, Plan.uniform(W4G32))
    export_quantized(w4, Plan.uniform(W4G32), target, model_ref=DIGITS, overwrite=True)
    assert read_export_plan(target)[0] == Plan.uniform(W4G32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExplorerError, match="not an earlier export"):
        export_quantized(quantized, plan, other, model_ref=DIGITS, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_failed_export_leaves_nothing(digits, tmp_path: Path, monkeypatch) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    quantized = quantize_model(model, plan)

    def broken(_model: nn.Module, _path: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(export_write, "export_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)
    assert list(tmp_path.iterdir()) == []


def test_export_checks_plan_and_model_ref(digits, tmp_path: Path) -> None:
    model, _ = digits
    quantized = quantize_model(model, Plan.uniform(W8))
    with pytest.raises(QuantConfigError, match="features.1"):
        export_quantized(quantized, Plan.uniform(W4G32), tmp_path / "a", model_ref=DIGITS)
    with pytest.raises(ExportError, match="unknown key"):
        export_quantized(quantized, Plan.uniform(W8), tmp_path / "b", model_ref={"name": "x"})
    with pytest.raises(ExportError, match="method"):
        export_quantized(quantized, Plan.uniform(W8), tmp_path / "c", model_ref=DIGITS, method="x")
    with pytest.raises(QuantConfigError, match="quant_report"):
        export_quantized(model, Plan.uniform(W8), tmp_path / "d", model_ref=DIGITS)
    assert list(tmp_path.iterdir()) == []


def test_tampered_shape_names_the_tensor(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    result = export_quantized(
        quantize_model(model, plan), plan, tmp_path / "export", model_ref=DIGITS
    )
    tensors = load_file(str(result.weights_path))
    tensors["features.3.scale"] = torch.cat([tensors["features.3.scale"]] * 2)
    rewrite_weights(result.weights_path, tensors)

    with pytest.raises(ModelLoadError, match=r"features\.3\.scale: expected \(64, 1\)"):
        load_export(model, result.folder)


def test_tampered_dtype_and_names_are_refused(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    result = export_quantized(
        quantize_model(model, plan), plan, tmp_path / "export", model_ref=DIGITS
    )
    original = load_file(str(result.weights_path))

    tensors = dict(original)
    tensors["features.3.qweight"] = tensors["features.3.qweight"].to(torch.uint8)
    rewrite_weights(result.weights_path, tensors)
    with pytest.raises(ModelLoadError, match=r"features\.3\.qweight: expected int8, got uint8"):
        load_export(model, result.folder)

    tensors = dict(original)
    tensors["features.9.qweight"] = tensors.pop("features.5.qweight")
    rewrite_weights(result.weights_path, tensors)
    with pytest.raises(ModelLoadError, match=r"Missing.*features\.5\.qweight"):
        load_export(model, result.folder)


def test_export_of_another_architecture_is_refused(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    export_quantized(
        quantize_model(make_mlp(), plan), plan, tmp_path / "mlp", model_ref={"factory": "t:mlp"}
    )

    with pytest.raises(ModelLoadError, match=r"\['0', '2', '4'\].*not in the model"):
        load_export(model, tmp_path / "mlp")


def test_missing_files_are_named(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    result = export_quantized(
        quantize_model(model, plan), plan, tmp_path / "export", model_ref=DIGITS
    )
    with pytest.raises(ModelLoadError, match="no such export folder"):
        load_export(model, tmp_path / "elsewhere")

    result.weights_path.unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: no such file"):
        load_export(model, result.folder)

    result.plan_path.unlink()
    with pytest.raises(ModelLoadError, match=r"plan\.json: no such file"):
        read_export_plan(result.folder)


def test_edited_plan_json_disagreeing_with_weights_is_refused(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8)
    result = export_quantized(
        quantize_model(model, plan), plan, tmp_path / "export", model_ref=DIGITS
    )
    doc = json.loads(result.plan_path.read_text())
    doc["plan"]["default"]["weight_bits"] = 4
    result.plan_path.write_text(json.dumps(doc))

    with pytest.raises(ModelLoadError, match="disagree"):
        load_export(model, result.folder)


# --- the reapply snippet -------------------------------------------------------------------------


def test_snippet_compiles_for_every_kind_of_reference() -> None:
    for plan in (Plan.uniform(W8), Plan.uniform(W8A8_STATIC), MIXED):
        for ref in (DIGITS, {"model": "/models/gpt2"}, {"factory": "pkg.mod:fn", "weights": "w"}):
            for folder in (None, "/exports/it's here"):
                compile(snippet(plan, ref, folder), "reapply.py", "exec")


def test_snippet_runs_in_process_and_rebuilds_the_model(digits, tmp_path: Path) -> None:
    model, images = digits
    plan = Plan.uniform(W4G32)
    quantized = quantize_model(model, plan)
    result = export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    names = runpy.run_path(str(result.snippet_path), run_name="__main__")

    assert torch.equal(names["qmodel"](images), quantized(images))
    assert torch.equal(names["reapplied"](images), quantized(images))  # PTQ weight-only


def test_snippet_runs_standalone(digits, tmp_path: Path) -> None:
    model, _ = digits
    plan = Plan.uniform(W8A8_STATIC)
    quantized = quantize_model(model, plan, calibration_data=digits[1][:64])
    result = export_quantized(quantized, plan, tmp_path / "export", model_ref=DIGITS)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(result.snippet_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"(a) exported model: {result.size_bytes} bytes stored"
    assert lines[1] == f"(b) plan reapplied: {result.size_bytes} bytes stored"


def test_the_documented_path_is_the_same_api() -> None:
    """``explorer.sweep.export`` (README, users' scripts) re-exports `explorer.export`."""
    import explorer.export
    import explorer.sweep.export

    assert explorer.sweep.export.__all__ == explorer.export.__all__
    for name in explorer.export.__all__:
        assert getattr(explorer.sweep.export, name) is getattr(explorer.export, name), name
