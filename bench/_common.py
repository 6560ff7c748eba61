"""Helpers shared by the benchmarks: result rows, a fast large synthetic slide, an untrained ensemble."""

from __future__ import annotations

import csv
import os
import sys


def emit(row: dict, csv_path: str | None, echo: bool = True) -> None:
    """Print the row as CSV (``echo``) and append it to ``csv_path``; a row with new columns rewrites the file with
    the union of the columns (older rows leave the new ones empty)."""
    if echo:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    if not csv_path:
        return
    rows, columns = [], list(row)
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or []) + [c for c in row if c not in (reader.fieldnames or [])]
    with open(csv_path, "w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=columns, restval="")
        out.writeheader()
        out.writerows(rows + [row])


def per_class_iou(metrics: dict) -> str:
    """A CSV cell: ``{"class": IoU}`` to 3 digits as standard JSON (an undefined IoU is null, not NaN)."""
    from minseg.io.storage import json_text

    return json_text({c: (round(v, 3) if v is not None else None)
                      for c, v in zip(metrics.get("classes", []), metrics.get("iou", []))}, indent=None)


def repeated_tile_slide(path: str, size: int, tile: int = 512, distinct: int = 24, seed: int = 0) -> None:
    """A size x size pyramidal JPEG BigTIFF built from a few rendered section tiles, repeated in a
    scrambled order: realistic texture and grains, written in a minute even at 40000 x 40000."""
    from minseg.io.tiff import PyramidSpec, write_pyramids
    from minseg.synth.sections import SectionRenderer

    renderer = SectionRenderer(seed=seed)
    tiles = [renderer.render(i * tile, 0, tile, tile)[0] for i in range(distinct)]
    spec = PyramidSpec(size, size, channels=3, tile=tile, compression="jpeg", reduce="mean")
    write_pyramids([(path, spec)], lambda row, col: (tiles[(row * 7 + col * 13) % distinct],))


def synthetic_slides(folder: str, count: int, size: int) -> list[str]:
    """``count`` copies of one size x size synthetic slide (``SlideSynth``) in ``folder``; copies, because
    rendering each costs more than the benchmark measures. Returns the paths, ``s000.tif`` first."""
    import shutil

    from minseg.synth.config import SlideSynth
    from minseg.synth.slide import write_synthetic_slide

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"s{index:03d}.tif") for index in range(count)]
    write_synthetic_slide(paths[0], os.path.join(folder, "mask.tif"), SlideSynth(height=size, width=size))
    for path in paths[1:]:
        shutil.copyfile(paths[0], path)
    return paths


def untrained_ensemble(root: str, members: list[tuple[str, str, dict]], tile: int, overlap: int,
                       mode: str = "soft") -> str:
    """Seeded, untrained members over the synthetic class map; returns the manifest URI."""
    import torch

    from minseg.ensemble.manifest import write_ensemble
    from minseg.models import build_model
    from minseg.synth.minerals import class_map_document

    classes = class_map_document()
    modules = []
    for rank, (name, model, options) in enumerate(members):
        torch.manual_seed(rank)
        modules.append((name, model, options, build_model(model, num_classes=len(classes["classes"]), **options)))
    return write_ensemble(root, modules, classes, mode=mode, tile=tile, overlap=overlap,
                          mean=(128.0, 128.0, 128.0), std=(64.0, 64.0, 64.0), name="bench")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a live process in MiB: ``rss`` (all), ``private`` (anonymous: the process's own
    heap), ``shared`` (shared memory mapped in: for Ray processes, object-store pages they touched) and
    ``hwm`` (the kernel's peak of rss)."""
    fields = {"VmRSS": "rss", "RssAnon": "private", "RssShmem": "shared", "VmHWM": "hwm"}
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name = line.split(":", 1)[0]
            if name in fields:
                values[fields[name]] = int(line.split()[1]) / 1024
    return values


def pids_titled(prefix: bytes) -> list[int]:
    """Processes whose title (Ray sets it to the running actor or task) starts with ``prefix``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().startswith(prefix):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def peak_memory(command: list[str], titles: dict[str, bytes]) -> dict[str, float]:
    """Run ``command`` and sample every 0.25 s the peak private memory (MiB) of the command itself
    (``private``, and ``hwm``: its RSS peak) and of the processes whose title starts with each of ``titles``
    (the largest one per key); also ``seconds``. Raises SystemExit when the command fails."""
    import subprocess
    import threading
    import time

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = {"private": 0.0, "hwm": 0.0, **{key: 0.0 for key in titles}}

    def sample():
        while process.poll() is None:
            try:
                own = memory_mib(process.pid)
                peaks["private"] = max(peaks["private"], own.get("private", 0.0))
                peaks["hwm"] = max(peaks["hwm"], own.get("hwm", 0.0))
                for key, title in titles.items():
                    for pid in pids_titled(title):
                        peaks[key] = max(peaks[key], memory_mib(pid).get("private", 0.0))
            except OSError:
                pass
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    process.wait()
    thread.join()
    if process.returncode:
        raise SystemExit(f"failed (exit {process.returncode}): {' '.join(command)}")
    return {**peaks, "seconds": time.perf_counter() - started}
