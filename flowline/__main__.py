"""``python -m flowline`` is the ``flowline`` command."""

from .cli import main

main()
