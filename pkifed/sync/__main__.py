"""Run the command line with ``python -m pkifed.sync``."""

from pkifed.sync.cli import main

main()
