"""Make whisper-tiny-en's synthetic speech: pick the sentence list, or synthesize the audio.

    python scripts/make_speech_audio.py --sentences   # rewrite assets/whisper-tiny-en/sentences.txt
    python scripts/make_speech_audio.py [--out DIR]   # synthesize (default: into the cache)

The sentence list is picked once from tiny-lm's corpus (CPython docstrings and comments, PSF
licence) and committed, so the audio never depends on how the corpus is rebuilt. A sentence is
kept when it reads aloud unambiguously: 6 to 18 words of letters (apostrophes and hyphens
inside words allowed), commas only as inner punctuation, a final period, every word after the
first in lower case (no identifiers, class names or acronyms), no word over 14 letters, and no
digits or code punctuation. The kept sentences are deduplicated and shuffled with a fixed seed;
the first 200 are the evaluation set, the next 120 the training set.

The recipe of the audio (voices, speeds, pitches, SNRs, seed) is in
`explorer.models.whisper_audio`; the explorer runs it on first use, this script only runs it
on demand and prints where the audio is.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.models.corpus import read_gzip  # noqa: E402
from explorer.models.whisper_audio import (  # noqa: E402
    EVAL_SENTENCES,
    SEED,
    sentences_path,
    speech_audio,
)

TOTAL = EVAL_SENTENCES + 120
WORD = r"[a-z]+(?:['-][a-z]+)*"
SENTENCE = re.compile(rf"[A-Z][a-z]*(?:['-][a-z]+)*(?:,? {WORD}){{5,17}}\.")
STOPWORDS_AT_END = {"the", "a", "an", "of", "to", "and", "or", "is", "e", "i"}


def pick_sentences(corpus: str, count: int = TOTAL, seed: int = SEED) -> list[str]:
    """``count`` sentences of ``corpus`` that read aloud cleanly, deduplicated and shuffled."""
    text = re.sub(r"\s+", " ", corpus)
    found: list[str] = []
    seen: set[str] = set()
    for candidate in re.split(r"(?<=[.!?]) ", text):
        candidate = candidate.strip()
        if not SENTENCE.fullmatch(candidate):
            continue
        words = candidate[:-1].replace(",", "").split()
        if max(len(w) for w in words) > 14 or words[-1] in STOPWORDS_AT_END:
            continue
        if candidate.lower() not in seen:
            seen.add(candidate.lower())
            found.append(candidate)
    if len(found) < count:
        raise SystemExit(f"only {len(found)} sentences qualify, {count} wanted")
    random.Random(seed).shuffle(found)
    return found[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", action="store_true", help="rewrite the sentence list")
    parser.add_argument("--out", help="cache folder to synthesize into (default: the explorer's)")
    args = parser.parse_args()
    if args.sentences:
        corpus = read_gzip(ROOT / "assets" / "tiny-lm" / "corpus.txt.gz").decode("utf-8")
        sentences = pick_sentences(corpus)
        sentences_path().write_text("\n".join(sentences) + "\n", encoding="utf-8")
        print(f"{len(sentences)} sentences -> {sentences_path()}")
        return
    folder = speech_audio(Path(args.out) if args.out else None)
    print(folder)


if __name__ == "__main__":
    main()
