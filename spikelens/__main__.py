"""`python -m spikelens` runs the command line."""

from spikelens.cli import main

main()
