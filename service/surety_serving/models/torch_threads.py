"""Training the small default models on one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with torch limited to one intra-op thread, then restore the setting.

    The matrices of these models are tiny: on a machine whose two cores are shared, a second
    torch thread only adds synchronisation (digits trained ~14× slower with two).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
