"""The speech task's training audio: a data folder with ``eval/`` and ``train/`` is evaluated on
``eval/`` only, calibrates on the first training utterances and gives QAT all of them
(`TaskData.train_split` → `ModelContext.train_split`); a training sentence that is also
evaluated is refused; a folder without ``train/`` says that QAT falls back to calibration. A
three-step QAT row of the tiny random Whisper of `test_speech` reports each step and trains on
the training split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.runner import RunSettings, evaluate_entry
from explorer.sweep.space import entry_for_plan
from explorer.tasks import TaskError
from explorer.tasks import speech as speech_module
from explorer.tasks.speech import normalise_text

from .builders import sentences
from .test_speech import save_whisper, write_folder

CALIBRATION = 2  # of the 5 training utterances: the other 3 are QAT's alone
EVAL = 4  # the fewest a speech folder may have


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whisper-train")
    save_whisper(root / "model")
    write_folder(root / "data" / "eval", n=EVAL)
    write_folder(root / "data" / "train", texts=sentences(5, seed=11))
    return root / "model"


@pytest.fixture(scope="module")
def ctx(whisper_dir: Path) -> ModelContext:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speech_module, "CALIBRATION_UTTERANCES", CALIBRATION)
        return open_context(
            ModelSource(model=str(whisper_dir), data=str(whisper_dir.parent / "data"))
        )


def test_train_split_is_loaded_and_disjoint_from_eval(ctx: ModelContext, whisper_dir: Path) -> None:
    assert ctx.train_split is not None
    x_train, y_train = ctx.train_split
    assert y_train is not None and len(x_train) == len(y_train) == 5
    # every eval/ utterance is evaluated: none is spent on calibration
    assert len(ctx.eval_split[0]) == EVAL
    task = ctx.task_spec
    assert task.references == sentences(EVAL, seed=7)
    evaluated = {normalise_text(t) for t in task.references}
    assert evaluated.isdisjoint(normalise_text(t) for t in sentences(5, seed=11))
    # calibration is the first training rows, built the same way (reference transcripts)
    x_cal, y_cal = ctx.calibration_split
    assert y_cal is not None and len(x_cal) == CALIBRATION
    width = x_cal.shape[1]
    assert torch.equal(x_cal, x_train[:CALIBRATION, :width])
    assert (x_train[:CALIBRATION, width:] == -1).all()  # only padding beyond the calibration rows
    assert (
        "calibration on the first 2 and QAT on all 5 utterances of train/" in ctx.data.description
    )
    # the training rows decode the training transcripts (the QAT targets, cut to the tiny
    # decoder's length), in order
    _, ids = ctx.model.split(x_train)
    prompt = len(task.prompt)
    texts = [normalise_text(task.decode([t for t in r[prompt:].tolist() if t >= 0])) for r in ids]
    said = [normalise_text(t) for t in sentences(5, seed=11)]
    assert all(text and full.startswith(text) for text, full in zip(texts, said, strict=True))


def test_qat_batches_come_from_the_train_split(ctx: ModelContext) -> None:
    x_train, y_train = ctx.train_split
    draw = ctx.qat_batches(2, seed=0)
    seen = set()
    for step in range(12):
        x, y = draw(step)
        for row_x, row_y in zip(x, y, strict=True):
            (index,) = [i for i in range(len(x_train)) if torch.equal(x_train[i], row_x)]
            assert torch.equal(y_train[index], row_y)
            seen.add(index)
    assert seen - set(range(CALIBRATION))  # training rows that do not calibrate are drawn


def test_a_short_qat_row_trains_on_the_train_split(ctx: ModelContext) -> None:
    config = QuantConfig(weight_bits=4, granularity="group", group_size=16, method="qat")
    entry = entry_for_plan(Plan.uniform(config), qat_steps=3)
    settings = RunSettings(n_boot=100, repeats=1, warmup=0, per_layer=False, eval_budget=2)
    calls: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, stage: str = "evaluate") -> None:
        calls.append((done, total, stage))

    # timed on one forward pass, not the 10 s transcription (most of the row's CPU time here)
    x = ctx.eval_split[0][:1]
    timed = replace(ctx, workloads={"forward": lambda model: lambda: model(x)})
    row = evaluate_entry(timed, entry, settings, progress=progress)
    assert [c for c in calls if c[2] == "qat"] == [(1, 3, "qat"), (2, 3, "qat"), (3, 3, "qat")]
    assert calls[-1][2] == "evaluate"  # then the quantized model's evaluation batches
    assert row["qat_steps"] == 3 and row["qat_data"] == "train"
    assert row["qat_lr"] == 1e-4 and row["qat_batch"] == 1  # Whisper's rate, one utterance
    assert np.isfinite(row["metrics"]["wer"])


def test_a_training_sentence_that_is_evaluated_is_refused(
    whisper_dir: Path, tmp_path: Path
) -> None:
    texts = sentences(3, seed=11)
    repeated = sentences(EVAL, seed=7)[2]
    texts.append(repeated.upper().rstrip(".") + "!")  # the same words, case and punctuation aside
    data = tmp_path / "data"
    write_folder(data / "eval", n=EVAL)
    write_folder(data / "train", texts=texts)
    with pytest.raises(TaskError) as err:
        open_context(ModelSource(model=str(whisper_dir), data=str(data)))
    message = str(err.value)
    assert message == (
        f"1 of the 4 training utterances in {data / 'train'} say a sentence that is also "
        f"evaluated in {data / 'eval'} (first: u3.wav, {texts[3]!r}); remove them from one of "
        "the two transcript CSVs"
    )


def test_a_folder_without_train_calibrates_and_trains_on_its_first_utterances(
    whisper_dir: Path,
) -> None:
    ctx = open_context(
        ModelSource(model=str(whisper_dir), data=str(whisper_dir.parent / "data" / "eval"))
    )
    assert ctx.train_split is None
    assert len(ctx.calibration_split[0]) == 1 and len(ctx.eval_split[0]) == 3  # a quarter of 4
    assert "no train/ folder: QAT trains on these calibration utterances" in ctx.data.description


def test_the_app_names_qat_steps() -> None:
    from explorer.inspect import sweep_progress
    from explorer.sweep.runner import SweepEvent

    extra = {"done": 3, "total": 200, "stage": "qat"}
    progress = sweep_progress([SweepEvent("started", total=2), SweepEvent("batch", extra=extra)])
    assert (progress.batch_done, progress.batch_total, progress.batch_stage) == (3, 200, "qat")
