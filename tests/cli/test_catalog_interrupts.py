"""Ctrl-C during a catalog stream: the first one is a flag read between photos, the second one raises."""

from __future__ import annotations

import os
import signal

import pytest

from comfyui_backdrop.cli.catalog.interrupts import ctrl_c_flag, until_interrupted


def test_first_ctrl_c_stops_after_the_row_in_hand_and_a_second_raises_at_once():
    seen = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), ctrl_c_flag() as flag:
        for row in until_interrupted(range(10), flag):
            seen.append(row)
            if row == 2:
                os.kill(os.getpid(), signal.SIGINT)  # nothing raised here: the row is finished first
    assert seen == [0, 1, 2] and flag.is_set()
    with pytest.raises(KeyboardInterrupt), ctrl_c_flag():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_without_ctrl_c_every_row_comes_through():
    with ctrl_c_flag() as flag:
        assert list(until_interrupted(iter("abc"), flag)) == ["a", "b", "c"]
