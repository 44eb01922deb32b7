"""`native.pack_int8` asks for transparent huge pages under the repacked weights (madvise
MADV_HUGEPAGE before writing, MADV_COLLAPSE after). Only whole 2 MiB pages inside the buffer
are advised, so the small shapes elsewhere never reach that code: here the packed weights span
several huge pages, and the layout and the products must come through the collapse intact."""

from __future__ import annotations

import pytest
import torch

from explorer.kernels import native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")


def test_int8_weights_packed_over_huge_pages_round_trip_and_stay_exact() -> None:
    g = torch.Generator().manual_seed(5)
    n, k = 4100, 1030  # ~4.2 MiB packed: at least one whole 2 MiB page at any alignment
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    packed = native.pack_int8(wq)
    assert packed.data.numel() > 4 << 20
    assert torch.equal(native.unpack_int8(packed), wq)
    xq = torch.randint(-128, 128, (3, k), generator=g, dtype=torch.int8)
    out = native.int8_gemm_packed(xq, packed)
    assert torch.equal(out.long(), xq.long() @ wq.long().T)
