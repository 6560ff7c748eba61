"""Ray job entrypoint: mineralogy of existing label maps (labels.tif, segmentation.ome.zarr, class-id masks),
one task per map spread over the cluster, outputs to local or s3://.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/measure_labels.py 's3://bucket/segment/*/labels.tif' --out s3://bucket/mineralogy
"""

import sys

from minseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["measure", *sys.argv[1:]]))
