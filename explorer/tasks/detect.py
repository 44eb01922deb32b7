"""Which task a model does, recognised from its architecture (the user can override it with
``--task``), and the `Task` object for each task name.

- ``…ForCausalLM``, ``…LMHeadModel`` → ``lm`` (causal language model);
- a sentence-transformers directory (``modules.json``, ``1_Pooling/config.json``), or a bare
  encoder (``BertModel``, ``RobertaModel``, ... of an encoder ``model_type``) → ``embedding``;
- ``…ForSequenceClassification``, ``…ForImageClassification`` → ``classification`` (an image
  classifier, `is_image_classifier`, reads images: `explorer.tasks.image_classification`);
- Whisper (``WhisperForConditionalGeneration``) → ``speech`` (`explorer.tasks.speech`);
- anything else → ``fidelity``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from explorer.tasks.task import Task, TaskError

TASK_NAMES = ("lm", "embedding", "classification", "speech", "fidelity")
ALIASES = {
    "causal-lm": "lm",
    "causal_lm": "lm",
    "embeddings": "embedding",
    "asr": "speech",
    "speech-recognition": "speech",
}
SPEECH_ARCHITECTURES = frozenset({"WhisperForConditionalGeneration"})
ENCODER_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "modernbert",
        "mpnet",
        "nomic_bert",
        "roberta",
        "xlm-roberta",
    }
)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json")


def canonical_task(name: str) -> str:
    """``name`` as one of `TASK_NAMES` (``causal-lm`` is ``lm``)."""
    task = ALIASES.get(name.strip().lower(), name.strip().lower())
    if task not in TASK_NAMES:
        raise TaskError(f"unknown task {name!r}; tasks: {', '.join(TASK_NAMES)} (or causal-lm)")
    return task


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{model_dir / 'config.json'} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise TaskError(f"{model_dir / 'config.json'} must hold a JSON object")
    return config


def detect_task(config: Mapping[str, Any], model_dir: Path | None = None) -> str:
    """The task of a Hugging Face model from its ``config.json`` (and directory layout)."""
    if model_dir is not None and any(
        (model_dir / f).is_file() for f in SENTENCE_TRANSFORMERS_FILES
    ):
        return "embedding"
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures and isinstance(architectures[0], str) else ""
    if arch in SPEECH_ARCHITECTURES:
        return "speech"
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "lm"
    if arch.endswith(("ForSequenceClassification", "ForImageClassification")):
        return "classification"
    if arch.endswith("Model") and str(config.get("model_type", "")).lower() in ENCODER_TYPES:
        return "embedding"
    return "fidelity"


def is_image_classifier(config: Mapping[str, Any]) -> bool:
    """An image classifier (ViT, ResNet, ConvNeXt, MobileNet ``…ForImageClassification``): its
    ``classification`` task reads images (`explorer.tasks.image_classification`), not text."""
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures and isinstance(architectures[0], str) else ""
    return arch.endswith("ForImageClassification")


def task_object(name: str) -> Task:
    """A `Task` for ``name`` with its defaults (a Hugging Face LM's per-token fidelity included;
    `legacy_task` gives the built-ins' own)."""
    from explorer.tasks.causal_lm import CausalLMTask
    from explorer.tasks.classification import ClassificationTask
    from explorer.tasks.embedding import EmbeddingTask
    from explorer.tasks.fidelity import FidelityTask
    from explorer.tasks.speech import SpeechTask

    task = canonical_task(name)
    return {
        "lm": CausalLMTask,
        "embedding": EmbeddingTask,
        "classification": ClassificationTask,
        "speech": SpeechTask,
        "fidelity": FidelityTask,
    }[task]()


def legacy_task(name: str) -> Task:
    """The task of a row named only by a string (built-in models, tabular and token-id data):
    a language model's fidelity over every position, as its rows have always been computed."""
    from explorer.tasks.causal_lm import CausalLMTask

    if canonical_task(name) == "lm":
        return CausalLMTask(per_token=False)
    return task_object(name)
