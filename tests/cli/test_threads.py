"""``--threads`` holds for one command: an in-process caller (a test, a notebook) gets its own
torch thread count back, whether the command succeeded or failed."""

from __future__ import annotations

import torch

from explorer import cli


def test_threads_come_back_after_a_failed_command() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = cli.main(["sweep", "--model", "no-such-model", "--threads", "1"])
        assert code == 2  # the model does not exist: an error after --threads was applied
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
