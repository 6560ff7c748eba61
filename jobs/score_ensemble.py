"""Ray job entrypoint: score a selected ensemble (its manifest) on a new labelled set, with the full report.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/score_ensemble.py --manifest s3://bucket/runs/x/evaluation/ensemble/manifest.json \
            --data s3://bucket/labelled/new-sections/ --out s3://bucket/runs/x/score/new-sections
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
