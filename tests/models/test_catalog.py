"""The torch-free catalog names exactly the registry's built-in models, in its order, with the
same default; importing it (and the app's session state) does not import torch."""

from __future__ import annotations

import subprocess
import sys

from explorer.models.catalog import BUILTIN_MODULES, BUILTIN_NAMES, DEFAULT_MODEL, ModelSource
from explorer.models.registry import builtin_models, default_model


def test_names_and_default_match_the_registry() -> None:
    models = builtin_models()
    assert list(models) == list(BUILTIN_NAMES)
    assert default_model().name == DEFAULT_MODEL
    assert [m.name for m in models.values() if m.default] == [DEFAULT_MODEL]


def test_registry_order_does_not_depend_on_import_order() -> None:
    # A fresh interpreter that imports the last model's module first (as a test module may).
    last = BUILTIN_MODULES[BUILTIN_NAMES[-1]]
    code = (
        f"import {last}\n"
        "from explorer.models.registry import builtin_models\n"
        "from explorer.models.catalog import BUILTIN_NAMES\n"
        "assert tuple(builtin_models()) == BUILTIN_NAMES, list(builtin_models())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_module_registers_the_model_of_its_name() -> None:
    for name, module in BUILTIN_MODULES.items():
        # the model's module, or a module of its package (tiny-lm is a package by concept)
        built_in = builtin_models()[name].build.__module__
        assert built_in == module or built_in.startswith(module + "."), (name, built_in)


def test_model_source_round_trips_through_json_data() -> None:
    source = ModelSource(model="digits-cnn", data="/tmp/data.csv")
    assert source.to_dict() == {"model": "digits-cnn", "data": "/tmp/data.csv"}
    assert ModelSource.from_dict(source.to_dict()) == source


def test_catalog_and_session_state_import_neither_torch_nor_pandas() -> None:
    # A fresh interpreter (this one has imported torch already); what streamlit itself imports
    # is loaded by the server before any page runs, so only what our modules add counts.
    code = (
        "import sys, streamlit\n"
        "before = set(sys.modules)\n"
        "import explorer.models.catalog, explorer.ui.state\n"
        "heavy = sorted({'torch', 'pandas'} & (set(sys.modules) - before))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
