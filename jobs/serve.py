"""spark-submit entry point for ``lesionspark serve``."""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
