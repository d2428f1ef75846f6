"""The process entry point (`mirakl-cancel`, `python -m mirakl_cancel.cli`)."""

from __future__ import annotations

import gc

import pytest

import mirakl_cancel.cli as cli


def test_the_command_freezes_what_lives_as_long_as_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its modules are frozen out of the collector's full passes before the command runs
    (`main`, which tests call in-process, freezes nothing)."""
    frozen: list[int] = []
    monkeypatch.setattr(cli, "main", lambda: frozen.append(gc.get_freeze_count()) or 0)
    before = gc.get_freeze_count()
    try:
        assert cli.entry() == 0
    finally:
        gc.unfreeze()  # this test process goes on: give its objects back to the collector
    assert frozen and frozen[0] > before
