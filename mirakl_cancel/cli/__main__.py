"""`python -m mirakl_cancel.cli`: the same command as `mirakl-cancel` (tests run it so)."""

from . import entry

raise SystemExit(entry())
