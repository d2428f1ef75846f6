"""The process entry point (`mirakl-cancel`, `python -m mirakl_cancel.cli`)."""

from __future__ import annotations

import gc

import pytest

import mirakl_cancel.cli as cli


def test_the_command_freezes_what_lives_as_long_as_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its modules are frozen out of the collector's full passes and its youngest
    generation is collected less often, before the command runs (`main`, which tests
    call in-process, changes neither)."""
    seen: list[tuple[int, tuple[int, int, int]]] = []
    monkeypatch.setattr(cli, "main",
                        lambda: seen.append((gc.get_freeze_count(), gc.get_threshold())) or 0)
    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        assert cli.entry() == 0
    finally:
        # This test process goes on: give its objects back to the collector, as it was.
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    [(frozen, during)] = seen
    assert frozen > before
    assert during == (cli._GC_YOUNG, *thresholds[1:])
