"""Throughput of the ensemble runtime (the code every inference actor runs) and of one training step.

For M members of one learner (untrained, seeded; by default the paper-size Res-UNet), on
batches of uint8 tiles as the actors receive them (host → device copy included), the
tiles per second of ``EnsembleRuntime.predict_images(...).fused_scores(WV)`` at:

- fp32, NCHW members;
- fp32 with channels_last members (what segmentation actors use);
- bf16 autocast with channels_last (``precision: auto`` on Ampere and later GPUs).

It also reports how many fused labels bf16 changes relative to fp32 (random weights make
near-ties common, so this is a pessimistic bound), and the tiles per second of one
training step (forward, loss, backward, Adam) of one member at fp32 and bf16 autocast.

    python bench/ensemble_runtime.py                       # a GPU: 5 paper-size Res-UNets, 512² tiles
    python bench/ensemble_runtime.py --depth tiny --width 0.125 --tile 128 --batch 4 --iters 3   # CPU check

Results are appended to bench/results/ensemble_runtime.csv (one row per run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import emit, untrained_ensemble  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inference_rate(runtime, fusion, batches: list[np.ndarray], warmup: int) -> tuple[float, torch.Tensor]:
    """Tiles per second over ``batches`` after ``warmup`` untimed ones; the labels of the first batch."""
    for batch in batches[:warmup]:
        runtime.predict_images(batch).fused_scores(fusion)
    synchronise(runtime.device)
    started = time.perf_counter()
    for batch in batches[warmup:]:
        scores = runtime.predict_images(batch).fused_scores(fusion)
    synchronise(runtime.device)
    seconds = time.perf_counter() - started
    labels = runtime.predict_images(batches[0]).fused_scores(fusion).argmax(1).cpu()
    del scores
    return sum(len(b) for b in batches[warmup:]) / seconds, labels


def training_rate(model_name: str, options: dict, classes: int, tile: int, batch: int, iters: int,
                  device: torch.device, dtype: torch.dtype | None) -> float:
    """Tiles per second of forward + CE loss + backward + Adam step for one member."""
    from minseg.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, num_classes=classes, **options).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (batch, tile, tile), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            output = model(images)
            output = output[0] if isinstance(output, tuple) else output
            loss = loss_fn(output.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    synchronise(device)
    return batch * iters / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="res_unet")
    parser.add_argument("--depth", default="paper", help="model depth option (paper | tiny), for learners that take one")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=8, help="timed batches per setting")
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(__file__), "results", "ensemble_runtime.csv"))
    args = parser.parse_args()

    from minseg.enums import FusionMode, Precision
    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import EnsembleRuntime, Fusion, MemberRef
    from minseg.io.storage import Storage

    gpus = 1.0 if torch.cuda.is_available() else 0.0
    from minseg.models import get_entry

    options = {"width": args.width}
    if "depth" in get_entry(args.model).options():
        options["depth"] = args.depth
    work = tempfile.mkdtemp(prefix="minseg-bench-runtime-")
    members = [(f"m{i}", args.model, options) for i in range(args.members)]
    manifest_uri = untrained_ensemble(work, members, args.tile, args.tile // 4, mode="wv")
    manifest = load_manifest(manifest_uri)
    storage = Storage()
    rng = np.random.default_rng(0)
    warmup = 2
    batches = [rng.integers(0, 255, (args.batch, args.tile, args.tile, 3), dtype=np.uint8)
               for _ in range(warmup + args.iters)]
    fusion = Fusion.of(manifest.fusion)
    refs = [MemberRef.of(m) for m in manifest.members]
    norm = manifest.normalization
    rates, labels = {}, {}
    for label, precision, channels_last in (("fp32", Precision.FP32, False), ("fp32_cl", Precision.FP32, True),
                                            ("bf16_cl", Precision.BF16, True)):
        runtime = EnsembleRuntime(refs, manifest.num_classes, storage, gpus=gpus, precision=precision,
                                  mean=norm["mean"], std=norm["std"], channels_last=channels_last)
        rates[label], labels[label] = inference_rate(runtime, fusion, batches, warmup)
        print(f"# inference {label}: {rates[label]:.1f} tiles/s ({args.members} members, {args.tile}² tiles, "
              f"batch {args.batch}, {runtime.device})", flush=True)
        del runtime
        if gpus:
            torch.cuda.empty_cache()
    agreement = float((labels["bf16_cl"] == labels["fp32"]).float().mean())
    device = torch.device("cuda" if gpus else "cpu")
    train_batch = max(1, args.batch // 2)
    train_fp32 = training_rate(args.model, options, manifest.num_classes, args.tile, train_batch, args.iters, device,
                               None)
    train_bf16 = training_rate(args.model, options, manifest.num_classes, args.tile, train_batch, args.iters, device,
                               torch.bfloat16 if gpus else None)
    name = torch.cuda.get_device_name() if gpus else "cpu"
    row = {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__, "model": args.model,
           "depth": options.get("depth", "-"), "width": args.width, "members": args.members, "tile": args.tile, "batch": args.batch,
           "fusion": str(FusionMode(manifest.fusion.mode)),
           "infer_fp32_tiles_s": round(rates["fp32"], 2), "infer_fp32_cl_tiles_s": round(rates["fp32_cl"], 2),
           "infer_bf16_cl_tiles_s": round(rates["bf16_cl"], 2),
           "bf16_over_fp32": round(rates["bf16_cl"] / rates["fp32"], 2),
           "channels_last_over_nchw": round(rates["fp32_cl"] / rates["fp32"], 2),
           "bf16_label_agreement": round(agreement, 4),
           "train_batch": train_batch, "train_fp32_tiles_s": round(train_fp32, 2),
           "train_bf16_tiles_s": round(train_bf16, 2), "train_bf16_over_fp32": round(train_bf16 / train_fp32, 2)}
    emit(row, args.csv)
    print(f"# {args.members}x {args.model} (depth {row['depth']}, width {args.width}) on {name}: inference "
          f"{row['infer_bf16_cl_tiles_s']} tiles/s bf16+channels_last vs {row['infer_fp32_tiles_s']} fp32 "
          f"({row['bf16_over_fp32']}x); bf16 keeps {agreement:.2%} of fp32's fused labels; training one member "
          f"{row['train_bf16_tiles_s']} tiles/s bf16 vs {row['train_fp32_tiles_s']} fp32")


if __name__ == "__main__":
    main()
