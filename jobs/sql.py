"""spark-submit entry point for ``lesionspark sql``."""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["sql", *sys.argv[1:]]))
