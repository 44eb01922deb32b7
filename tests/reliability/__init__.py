"""Hostile inputs and faults against the command line and the sweep (issue 18), one test each.

Each test drives the real CLI (`explorer.cli.main` in process, or ``python -m explorer.cli`` where
a crash would take the test process with it) and asserts the exit status, that the error is one
line on stderr with no traceback, and, where a store is involved, that its bytes are unchanged.

Fault → what is asserted:

- Every row of a sweep fails, baselines included (evaluation forced to raise) → exit 2; each
  failure on one stderr line, then one error line; nothing on stdout (no table, no JSON).
- Some rows fail → exit 0; the failures on stderr, not stdout; `run_sweep`'s ``done`` event
  counts evaluated, cached and failed entries.
- ``--granularity group0``, ``group1``, ``group-32``, ``groupx``, ``g`` → exit 2 before the model
  loads or the store is created; the same one-line message, naming the value.
- ``--granularity group7`` on digits-cnn (layer widths 16 to 512) → exit 2 before any row runs,
  naming ``features.1`` and its in_features 16; ``export`` refuses it the same way.
- A group size some layers fall back from (group32; features.1 has 16 inputs) → the label names
  the layer and the fallback; under ``--fallback error`` or for explicitly named layers, refused.
- ``--threads 100000`` (segfaulted), ``--threads 20000`` (libgomp error) → exit 2, one line
  naming the value and the CPU count (in a subprocess, so a crash cannot take pytest with it).
- A read-only store: a write-protected file (mode 444; for root, run with the power to ignore
  file modes dropped by ``setpriv``), and SQLite opened read-only in process → exit 2 before any
  row is evaluated, one line saying read-only; the store's bytes unchanged.
- Damaged rows (JSON that does not parse, a JSON list, bytes that are not UTF-8) → the sweep's
  error names ``explorer store repair``; ``store check`` lists them and changes nothing;
  ``store repair`` quarantines them and leaves every other row byte-identical; the next sweep
  re-evaluates only them; ``store delete-row`` removes one row, an unknown key is exit 2.
- ``explorer store check`` where there is no store → exit 2, one line, no file created.
"""
