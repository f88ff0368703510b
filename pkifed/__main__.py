"""Run the command line with ``python -m pkifed``."""

from pkifed.sync.cli import main

main()
