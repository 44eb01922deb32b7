"""Exceptions carrying a message a user can act on; the CLI prints it, never a traceback."""


class ExplorerError(Exception):
    """Base class of every error the explorer reports to a user."""


class QuantConfigError(ExplorerError, ValueError):
    """A quantization config or plan is invalid, or cannot apply to a layer."""


class QuantizationError(ExplorerError, ValueError):
    """A tensor cannot be quantized (non-finite values, wrong shape)."""


class KernelError(ExplorerError, RuntimeError):
    """No kernel can run a layer, or a kernel was given inputs it does not accept."""


class ModelLoadError(ExplorerError, ValueError):
    """A model or weights file cannot be loaded safely."""


class TaskError(ExplorerError, ValueError):
    """A task cannot apply to this model or data (no tokenizer, missing columns, bad rows)."""
