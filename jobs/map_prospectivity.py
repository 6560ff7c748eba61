"""Ray job entrypoint: prospectivity mapping (samples + evidence -> MFAF ensemble -> maps and targets).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/map_prospectivity.py --config configs/prospect_gtk.yaml
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["prospect", *sys.argv[1:]]))
