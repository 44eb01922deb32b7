"""Where greedy Whisper decoding stops when the end of text never comes.

A Whisper decoder has ``max_target_positions`` positions (448 for every OpenAI checkpoint), and
prompt and transcript share them. OpenAI's own decoder samples at most ``sample_len =
n_text_ctx // 2`` tokens (Radford et al., "Robust Speech Recognition via Large-Scale Weak
Supervision", 2022; ``whisper/decoding.py``), which keeps room for earlier text as a prompt.
CTranslate2's Whisper (``src/models/whisper.cc``) decodes at most ``min(max_length // 2,
max_length - start_step)`` steps, ``start_step`` being the prompt tokens fed before the last
one, and faster-whisper passes it ``max_length = 448``: the same half.

Most transcripts end long before: 30 s of fast speech is about 100 tokens. The limit matters
when a model falls into a repetition loop ("to India to India ..."): then every runtime writes
until it, and word error rates compare only if the limit is the same everywhere.

Imports: ``explorer.errors``.
"""

from __future__ import annotations

from explorer.errors import TaskError


def transcript_limit(max_target_positions: int, prompt_length: int) -> int:
    """Most tokens greedy decoding writes after a prompt of ``prompt_length`` tokens, the end
    of text included, for a decoder of ``max_target_positions`` positions: half of them, as
    OpenAI's decoder and CTranslate2 (so faster-whisper) stop. Also bounded by the positions the
    prompt leaves (``transformers`` refuses more), which differs from CTranslate2's
    ``max_length - (prompt_length - 1)`` only for prompts over half the context."""
    if prompt_length < 1 or prompt_length >= max_target_positions:
        raise TaskError(
            f"a decoder prompt of {prompt_length} tokens leaves no room in "
            f"{max_target_positions} decoder positions"
        )
    return min(max_target_positions // 2, max_target_positions - prompt_length)
