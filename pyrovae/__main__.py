"""``python -m pyrovae``: the same as the ``pyrovae`` command."""

from pyrovae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
