"""Ray job entrypoint: ``python jobs/synthesize.py --out s3://bucket/synth --config configs/demo.yaml``."""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
