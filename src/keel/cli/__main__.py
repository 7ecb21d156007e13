"""``python -m keel.cli``."""

from . import main

main()
