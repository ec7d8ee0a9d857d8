"""How the engine names what went wrong while reading an upload (core.errors)."""

import pytest
import torch

from squeezer.core.errors import DatasetError, unforeseen_as


def test_a_library_failure_while_reading_is_the_input_s_error_but_running_out_of_memory_is_not():
    with pytest.raises(DatasetError, match="the data set d.npz could not be read: ValueError: bad header"):
        with unforeseen_as(DatasetError, "the data set d.npz"):
            raise ValueError("bad header")
    allocator = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    for error in (MemoryError(), allocator):
        with pytest.raises(type(error)):  # the job then fails as out_of_memory, never as invalid input
            with unforeseen_as(DatasetError, "the data set d.npz"):
                raise error


def test_torch_s_own_allocation_failure_passes_as_out_of_memory():
    with pytest.raises(RuntimeError, match="allocate"):
        with unforeseen_as(DatasetError, "the data set d.npz"):
            torch.empty(1 << 62, dtype=torch.uint8)  # more than any machine has
