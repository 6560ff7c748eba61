"""Ray job entrypoint: evaluate the members of a training run, select an ensemble, write its manifest.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evaluate_ensemble.py --config configs/ruel_paper.yaml
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
