"""tiny-lm's training code: a smoke run of the whole pipeline (tokenizer, Llama, save, reload
through the safe loader, card) on a tiny config. The shipped asset and its
acceptance trends are tested in test_tinylm.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from explorer.models import tinylm


@pytest.mark.slow
def test_training_code_runs_two_steps_on_a_tiny_config(tmp_path: Path) -> None:
    """2 steps of a 1-layer Llama with a 300-token BPE vocabulary: the card records the steps
    and the eval tokens (2 rows of 256), the checkpoint is removed, and the directory opens
    with transformers directly."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tiny = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    config = tinylm.TrainConfig(steps=2, batch_size=2, warmup=1, threads=1)
    metrics = tinylm.train(
        tmp_path,
        0,
        config=config,
        architecture=tiny,
        vocab_size=300,
        eval_rows=2,
        ptq=False,
        latency=False,
    )
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["training"]["steps_taken"] == 2 and len(card["loss_curve"]) == 2
    assert metrics == {"float": card["float"]} and math.isfinite(card["float"])
    assert card["eval_tokens"] == 2 * tinylm.CONTEXT
    expected = math.log2(card["float"]) * card["eval_tokens"] / card["eval_bytes"]
    assert card["bits_per_byte"]["float"] == pytest.approx(expected, rel=1e-9)
    assert not (tmp_path / "train_state.pt").exists()
    loaded = LlamaForCausalLM.from_pretrained(str(tmp_path))
    assert loaded.config.hidden_size == 64 and loaded.config.num_key_value_heads == 1
    assert loaded.config.vocab_size == 300
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) == 300 and tokenizer.bos_token == tinylm.BOS
    text = "Return the number of bytes in the buffer.\n"
    ids = tinylm.encode(tokenizer, text)
    assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids.tolist()) == text
    assert "# tiny-lm" in (tmp_path / "CARD.md").read_text()
