"""Scale-out simulation of the block pipeline on one machine: a Ray cluster of several nodes
(``ray.cluster_utils.Cluster``: a head without CPUs for work, and worker nodes, each its own raylet
and object store on 127.0.0.1), a batch of small synthetic slides.

Measured in this one run:

- the driver's peak RSS and CPU seconds for a batch of ``--few`` slides and of ``--many`` slides
  (ratio many : few; the driver keeps a set of block names per unfinished slide, so it should stay
  flat: target <= 1.2 for peak RSS);
- the driver's CPU per block: one ``--block-slide``² slide cut into 512² blocks and into 1024² blocks
  (the difference in driver CPU over the difference in blocks: what a 16-node run's driver pays per
  block-done row), and the same 512² blocks eight per task (``segment.blocks_per_task``);
- throughput (tiles/s) of the ``--many`` batch for each actor count in ``--actors``.

On a 2-core machine the nodes share the same two cores, so tiles/s stops growing past two actors:
this shows that work spreads over nodes and that the driver does not become the bottleneck, not the
speed-up a real cluster gets (docs/scaling.md).

    python bench/segment_scaleout.py [--nodes 3] [--few 5] [--many 50] [--size 512] [--actors 1 2 4] \\
        [--csv bench/results/segment_scaleout.csv]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, synthetic_slides, untrained_ensemble  # noqa: E402

MEMBERS = [("halfunet", "half_unet", {"width": 0.25})]


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS every 20 ms while running (the driver's peak over one batch)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def segment_batch(manifest: str, slides: list[str], out: str, actors: int, cpus_per_actor: float,
                  **settings) -> dict:
    from minseg.config.schema import MinsegConfig
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import segment_slides

    config = MinsegConfig()
    config.segment = SegmentSettings(manifest_uri=manifest, slides=slides, output_uri=out, actors=actors,
                                     cpus_per_actor=cpus_per_actor, force=True, **settings)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    with PeakRSS() as rss:
        started = time.perf_counter()
        result = segment_slides(config)
        seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    assert len(result.done) == len(slides), result.failed
    tiles = sum(s["tiles"] for s in result.done)
    return {"seconds": seconds, "tiles_s": tiles / seconds, "driver_peak_rss_mib": rss.peak / 2**20,
            "driver_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
            "driver_bytes": result.driver_bytes, "blocks": result.blocks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes (each with --node-cpus CPUs)")
    parser.add_argument("--node-cpus", type=float, default=1.0)
    parser.add_argument("--few", type=int, default=5)
    parser.add_argument("--many", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="side of each synthetic slide")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--block-slide", type=int, default=4096, help="side of the slide cut into many blocks")
    parser.add_argument("--csv")
    args = parser.parse_args()
    os.environ.setdefault("MINSEG_LOG_LEVEL", "WARNING")

    import ray
    from ray.cluster_utils import Cluster

    work = tempfile.mkdtemp(prefix="minseg-scaleout-")
    slides = synthetic_slides(os.path.join(work, "slides"), args.many, args.size)
    [big] = synthetic_slides(os.path.join(work, "big"), 1, args.block_slide)
    manifest = untrained_ensemble(os.path.join(work, "ensemble"), MEMBERS, 256, 64)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head only coordinates
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=args.node_cpus)
    ray.init(address=cluster.address, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "minseg.runtime._worker_setup"})
    cluster.wait_for_nodes()
    total_cpus = args.nodes * args.node_cpus
    try:
        rows = []
        # reads and finishing tasks take 0.25 CPU each: leave them a quarter of the cluster
        def share(actors: int) -> float:
            return round(min(args.node_cpus * 0.75, 0.75 * total_cpus / actors), 3)

        base = max(args.actors[0], 2) if 2 in args.actors else args.actors[0]
        few = segment_batch(manifest, slides[: args.few], os.path.join(work, "few"), base, share(base))
        many = segment_batch(manifest, slides, os.path.join(work, "many"), base, share(base))
        print(f"# driver: peak RSS {few['driver_peak_rss_mib']:.0f} MiB for {args.few} slides, "
              f"{many['driver_peak_rss_mib']:.0f} MiB for {args.many} "
              f"(x{many['driver_peak_rss_mib'] / few['driver_peak_rss_mib']:.3f}); CPU "
              f"{few['driver_cpu_s']:.1f} s / {many['driver_cpu_s']:.1f} s "
              f"({many['driver_cpu_s'] / args.many * 1000:.0f} ms per slide)", file=sys.stderr)
        coarse = segment_batch(manifest, [big], os.path.join(work, "b1024"), base, share(base), block=1024)
        fine = segment_batch(manifest, [big], os.path.join(work, "b512"), base, share(base), block=512)
        per_block = (fine["driver_cpu_s"] - coarse["driver_cpu_s"]) / (fine["blocks"] - coarse["blocks"])
        grouped = segment_batch(manifest, [big], os.path.join(work, "b512x8"), base, share(base), block=512,
                                blocks_per_task=8)
        print(f"# driver CPU per block: {1000 * per_block:.1f} ms ({coarse['blocks']} blocks: "
              f"{coarse['driver_cpu_s']:.2f} s, {fine['blocks']} blocks: {fine['driver_cpu_s']:.2f} s; "
              f"8 blocks per task: {grouped['driver_cpu_s']:.2f} s)", file=sys.stderr)
        by_actors = {base: many}
        for actors in args.actors:
            if actors not in by_actors:
                by_actors[actors] = segment_batch(manifest, slides, os.path.join(work, f"a{actors}"), actors,
                                                  share(actors))
            print(f"# {actors} actors: {by_actors[actors]['tiles_s']:.1f} tiles/s", file=sys.stderr)
        row = {"date": time.strftime("%Y-%m-%d"), "nodes": args.nodes, "node_cpus": args.node_cpus,
               "physical_cpus": os.cpu_count(), "size": args.size, "few": args.few, "many": args.many,
               "actors_for_ratio": base,
               "driver_rss_few_mib": round(few["driver_peak_rss_mib"], 1),
               "driver_rss_many_mib": round(many["driver_peak_rss_mib"], 1),
               "driver_rss_ratio": round(many["driver_peak_rss_mib"] / few["driver_peak_rss_mib"], 3),
               "driver_cpu_few_s": round(few["driver_cpu_s"], 2), "driver_cpu_many_s": round(many["driver_cpu_s"], 2),
               "driver_cpu_ms_per_slide_many": round(1000 * many["driver_cpu_s"] / args.many, 1),
               "driver_bytes_per_slide": round(many["driver_bytes"] / args.many, 1),
               "driver_cpu_ms_per_block": round(1000 * per_block, 1),
               "driver_bytes_per_block": round(fine["driver_bytes"] / fine["blocks"], 1),
               "blocks_fine": fine["blocks"], "driver_cpu_fine_s": round(fine["driver_cpu_s"], 2),
               "driver_cpu_fine_8_per_task_s": round(grouped["driver_cpu_s"], 2)}
        for actors in args.actors:
            row[f"tiles_s_{actors}_actors"] = round(by_actors[actors]["tiles_s"], 2)
        rows.append(row)
        emit(row, args.csv)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
