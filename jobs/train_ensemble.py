"""Ray job entrypoint: train every member of an ensemble concurrently.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_ensemble.py --config configs/ruel_paper.yaml [--members learner01,learner02] [--resume]
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
