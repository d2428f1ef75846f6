"""``python -m mirakl_cancel.simulator``: see ``_cli`` for the options."""

from ._cli import add_arguments, build_arg_parser, main

__all__ = ["add_arguments", "build_arg_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
