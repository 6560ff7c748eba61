"""Ray job entrypoint: segment whole slides with a selected ensemble, outputs to local or s3://.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/segment_slides.py --config configs/segment_s3.yaml
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
