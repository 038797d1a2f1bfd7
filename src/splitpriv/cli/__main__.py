"""``python -m splitpriv.cli``."""

from splitpriv.cli import main

main()
