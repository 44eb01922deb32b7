"""Another ggml build in the folder ``EXPLORER_GGML_LIB_DIR`` names (`explorer.quant.ggml`), and
how the bench labels the ggml it runs (`explorer.measure.emulate.ggml_build`): no build here,
fake folders and fake libraries."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from explorer.measure import emulate
from explorer.quant import ggml


def test_a_folder_without_ggml_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_GGML_LIB_DIR", str(tmp_path))
    with pytest.raises(ggml.GgmlError) as err:
        ggml.library_dir()
    assert str(err.value) == (
        f"EXPLORER_GGML_LIB_DIR={tmp_path} holds no libggml-base, libggml-cpu, libggml: point it "
        "at the folder of a ggml build's shared libraries (see the README), or unset it"
    )
    assert emulate.ggml_build.__wrapped__() is None  # the bench then has no ggml to label


def test_a_folder_missing_one_library_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("libggml-base.so", "libggml.so.0"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("EXPLORER_GGML_LIB_DIR", str(tmp_path))
    with pytest.raises(ggml.GgmlError, match=r"holds no libggml-cpu: point it"):
        ggml.library_dir()


def test_refused_once_llama_cpp_loaded_its_own_ggml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its libggml-base would serve the other build's CPU library too (same soname)."""
    for name in ggml.LIBRARIES:
        (tmp_path / f"{name}.so").write_bytes(b"")
    monkeypatch.setenv("EXPLORER_GGML_LIB_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "llama_cpp", SimpleNamespace())
    with pytest.raises(ggml.GgmlError, match=r"^EXPLORER_GGML_LIB_DIR is set but llama_cpp"):
        ggml.library_dir()


def _fake_cpu_library(*sets: str) -> SimpleNamespace:
    """ggml's CPU library as ctypes shows it: ``ggml_cpu_has_<set>()`` 1 for ``sets``, else 0."""
    return SimpleNamespace(
        **{f"ggml_cpu_has_{n}": (lambda on=n in sets: int(on)) for n in emulate.GGML_FLAGS}
    )


AVX2_BUILD = ("avx", "avx2", "fma", "f16c", "bmi2")
AVX2_HIDES = ["avx512_bf16", "avx512_vnni", "avx512bw", "avx512f", "avx512vbmi", "avx512vl"]


def test_an_avx2_build_is_labelled_avx2_and_restricted_under_avx2() -> None:
    uses = emulate.ggml_uses(_fake_cpu_library(*AVX2_BUILD))
    assert uses == ["avx", "avx2", "fma", "f16c", "bmi2"]
    assert emulate.ggml_label(uses) == "avx2"
    assert emulate.ggml_restricted(uses, AVX2_HIDES)
    assert not emulate.ggml_restricted(uses, None)  # nothing emulated: nothing restricted


def test_an_avx512_build_is_not_restricted_under_avx2() -> None:
    lib = _fake_cpu_library(*AVX2_BUILD, "avx512", "avx512_vnni", "avx512_bf16")
    uses = emulate.ggml_uses(lib)
    assert emulate.ggml_label(uses) == "avx512_vnni"
    assert not emulate.ggml_restricted(uses, AVX2_HIDES)
    assert emulate.ggml_restricted(uses, [])  # emulating the machine it was built for
    assert emulate.ggml_label(emulate.ggml_uses(SimpleNamespace())) == "generic"
