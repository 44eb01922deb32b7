"""Tasks: what a model does, and so how it is judged (DESIGN.md, "Two concepts").

A `Task` brings its data (read with the model directory's own tokenizer), its metric, the
output tensor fidelity compares (taken by name from a ``ModelOutput``, never guessed from its
shape) and its latency workloads. One module per task:

- `explorer.tasks.causal_lm`: perplexity over strided text windows, per-token KL (mean, p99)
  and same top token; ``decode`` and ``prefill`` workloads with the model's own KV cache;
- `explorer.tasks.embedding`: pooled sentence embeddings (sentence-transformers pooling),
  cosine to float, Spearman on scored pairs; ``single`` and ``batch32`` workloads;
- `explorer.tasks.classification`: top-1 accuracy (built-in classifiers, tabular data);
- `explorer.tasks.image_classification`: top-1 accuracy on image folders;
- `explorer.tasks.speech`: Whisper's word error rate on audio folders with a transcript CSV
  (read by `explorer.tasks.audio`), decoder fidelity teacher-forced on the float transcript,
  and the ``transcribe_10s`` workload with its real-time factor;
- `explorer.tasks.fidelity`: anything else, output fidelity only.

`explorer.tasks.detect` recognises the task from a Hugging Face config's architecture.

Layering: tasks sit with the models, below the sweep (``quant ← kernels ← nn ← models/tasks ←
measure ← targets ← sweep``), but they compute their per-sample statistics with
`explorer.measure.evaluation`, which imports only `explorer.errors` and torch, so the direction
stays acyclic. Imports: `explorer.errors`, `explorer.measure.evaluation`, `explorer.models`
(`safe_load`, `userdata`) and, lazily, ``transformers`` (and for speech ``jiwer``, ``soundfile``,
``soxr``: the speech extra). Never `explorer.sweep` or the UI.
"""

from explorer.tasks.detect import (
    TASK_NAMES,
    canonical_task,
    detect_task,
    legacy_task,
    read_config,
    task_object,
)
from explorer.tasks.task import Task, TaskData, TaskError, named_output

__all__ = [
    "TASK_NAMES",
    "Task",
    "TaskData",
    "TaskError",
    "canonical_task",
    "detect_task",
    "legacy_task",
    "named_output",
    "read_config",
    "task_object",
]
