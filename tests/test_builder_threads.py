"""The builder picks its thread count from the cores other tasks leave free, and restores the caller's setting."""

import torch

from ep.method.device import fair_threads, torch_threads


def test_fair_threads_in_range():
    assert 1 <= fair_threads() <= torch.get_num_threads()


def test_torch_threads_restores_setting():
    old = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    try:
        with torch_threads(None) as n:
            assert torch.get_num_threads() == n >= 1
            raise KeyError
    except KeyError:
        pass
    assert torch.get_num_threads() == old
