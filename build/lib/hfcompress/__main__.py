"""`python -m hfcompress ...`: the same as the `hfcompress` console command."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m hfcompress"))
