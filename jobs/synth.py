"""spark-submit-free generator of a HAM10000-shaped dataset; same arguments as ``lesionspark synth``."""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
