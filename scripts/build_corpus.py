"""Build ``assets/tiny-lm/corpus.txt.gz`` from the docstrings and comments of CPython's standard
library (PSF License 2.0), with a manifest and a copy of the licence.

The shipped corpus was built on Python 3.11.7; another Python's standard library gives different
text (the manifest's sha256 says which). Training never runs this: it reads the shipped file.

Usage: python scripts/build_corpus.py [--out assets/tiny-lm] [--stdlib PATH]
The last stdout line is one JSON document (the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sysconfig
from pathlib import Path

from explorer.models.corpus import build_corpus, python_version, stdlib_files, write_gzip

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "tiny-lm")
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    args = parser.parse_args()

    files = stdlib_files(args.stdlib)
    data = build_corpus(files)
    args.out.mkdir(parents=True, exist_ok=True)
    write_gzip(data, args.out / "corpus.txt.gz")
    licence = args.stdlib / "LICENSE.txt"
    if licence.exists():
        shutil.copyfile(licence, args.out / "LICENSE-PSF.txt")
    manifest = {
        "source": "docstrings and comments of the CPython standard library (.py files)",
        "licence": "PSF License Agreement version 2 (see LICENSE-PSF.txt)",
        "python": python_version(),
        "files": len(files),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (args.out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
