"""Ray job entrypoint for the demo: ``ray job submit --working-dir . -- python jobs/demo.py``."""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
