"""The LumenStone CPU recipe's numbers (issue #20): its members, RUEL-k ensembles, the selected one and its gain.

Runs the recipe's own commands in-process on the real sections (``../shared/data/lumenstone``):
``minseg train`` then ``minseg evaluate`` with configs/lumenstone_cpu.yaml. Members are ranked and the
ensemble is chosen on the validation split; everything printed as "test" comes from the test split, which
chose nothing. Prints the members table, the RUEL-k table and the selected candidate with its gain over the
best member on test (the issue's yardstick) and over the member ranked first on validation (the one the
selection knows), then the same evaluation with flip test-time augmentation (evaluation name ``tta-flips``
beside ``ensemble``, ``<name>-tta-flips`` beside ``--set evaluation.name=<name>``; ``--tta none`` skips it).
One CSV row per candidate and evaluation goes to bench/results/lumenstone_recipe.csv.

``--pixel-baseline`` scores a reference the members must beat: a quadratic discriminant (scikit-learn) on each
pixel's RGB alone, no spatial context, fitted on 3000 pixels per training image of the same split and scored
on the test split at the recipe's scale (row ``pixel-qda-rgb``).

    python bench/lumenstone_recipe.py            # ~51 min training + ~10 min for both evaluations, 2 cores
    python bench/lumenstone_recipe.py --reuse    # keep the members a previous run trained; evaluate again
    python bench/lumenstone_recipe.py --pixel-baseline   # ~1 min; needs the run's data/splits.json
    python bench/lumenstone_recipe.py --pool configs/lumenstone_cu_ni.yaml configs/lumenstone_polymetallic.yaml
    python bench/lumenstone_recipe.py --config configs/lumenstone_cu_ni.yaml \
        --set data.split.seed=1 --set run.name=lumenstone-cu-ni-split1   # the same recipe on another split
    python bench/lumenstone_recipe.py --config configs/lumenstone_cu_ni.yaml --split-seeds 0 1 2 --tta none

``--split-seeds 0 1 2`` runs the recipe once per split seed (run ``<run.name>-split<seed>``, so seed 0 is a run of
its own) and ends with the selected ensemble's test mIoU and gains as mean ± sd over the seeds: with four test
photographs one split's gain can be luck.

``--set KEY=VALUE`` overrides a config value as ``minseg train --set`` does (give the run another name so its
members do not mix with the recipe's); the CSV's config column records the overrides.

``--pool`` sums the confusion matrices of several finished evaluations (the two ore-assemblage recipes) over the
union of their classes: one collection-wide table (per-class IoU, mIoU) for the selected ensembles and for the
members ranked first on validation, each routed to the photographs of its own assemblage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import emit, per_class_iou  # noqa: E402
from minseg.config.base import parse_set_options  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "lumenstone"


def _miou(metrics: dict) -> float | None:
    return round(metrics["miou"], 4) if metrics else None


def _shown(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "  –"


def report(evaluation, label: str) -> list[dict]:
    """Print the members table, the RUEL-k table and the selection; return one CSV row per candidate."""
    members = {c.members[0]: c for c in evaluation.candidates if c.is_member}
    top = next((members[name] for name in evaluation.ranking if name in members), None)
    if top is None:
        sys.exit(f"{label}: no member was scored")
    best = max(members.values(), key=lambda c: c.metrics["miou"])  # on test: the yardstick
    chosen = evaluation.selected
    print(f"\n== {label}: members (ranked on {evaluation.rank_split}) ==")
    print(f"{'member':<20} {'val mIoU':>9} {'test mIoU':>10}")
    for name in evaluation.ranking:
        if name in members:
            c = members[name]
            print(f"{name:<20} {_shown(_miou(c.selection_metrics)):>9} {_shown(_miou(c.metrics)):>10}")
    print(f"\n== {label}: RUEL-k ensembles ==")
    print(f"{'candidate':<22} {'val mIoU':>9} {'test mIoU':>10} {'gain (pt) over the best member on test':>40}")
    for c in evaluation.candidates:
        if not c.is_member:
            gain = 100 * (c.metrics["miou"] - best.metrics["miou"])
            print(f"{c.key:<22} {_shown(_miou(c.selection_metrics)):>9} {_shown(_miou(c.metrics)):>10} {gain:>+40.1f}")
    print(f"\nselected {chosen.key} on {evaluation.document.get('selection_split')}: test mIoU "
          f"{chosen.metrics['miou']:.3f}; best member on test {best.key} {best.metrics['miou']:.3f} "
          f"({100 * (chosen.metrics['miou'] - best.metrics['miou']):+.1f} pt); member ranked first on validation "
          f"{top.key} {top.metrics['miou']:.3f} ({100 * (chosen.metrics['miou'] - top.metrics['miou']):+.1f} pt)")
    print("per class (test IoU): " + ", ".join(f"{k} {v:.2f}" for k, v in zip(chosen.metrics["classes"],
                                                                              chosen.metrics["iou"])))
    rules(evaluation, best, top)
    return [{"evaluation": label, "candidate": c.key, "members": "+".join(c.members),
             "mode": c.mode.value if c.mode else "", "val_miou": _miou(c.selection_metrics),
             "test_miou": _miou(c.metrics),
             "gain_over_best_member_on_test_pt": round(100 * (c.metrics["miou"] - best.metrics["miou"]), 2),
             "gain_over_val_top_member_pt": round(100 * (c.metrics["miou"] - top.metrics["miou"]), 2),
             "selected": c.key == chosen.key, "test_iou_per_class": per_class_iou(c.metrics),
             # learned candidates' validation scores: weights fitted without the image (since 2026-12-02)
             "learned_val_scores": "out-of-fold" if evaluation.document.get("learned_held_out_weights") else ""}
            for c in evaluation.candidates]


def rules(evaluation, best, top) -> None:
    """What each selection rule picks from the same scores (``minseg select --rule``; no prediction), and the
    candidates within one standard error of the best on validation with their standard errors."""
    from minseg.ensemble.config import SelectionSettings
    from minseg.ensemble.selection import most_members, select, within_one_standard_error
    from minseg.enums import SelectionRule

    key, groups = evaluation.rank_key, evaluation.document.get("selection_groups")
    settings = SelectionSettings.model_validate(evaluation.document["selection"])
    within = within_one_standard_error(evaluation.candidates, key, settings.bootstrap_draws, groups)
    others = ", ".join(f"{c.key} (se {se:.4f})" for c, se in within[1:]) or "none"
    print(f"within one standard error of {within[0][0].key} on {evaluation.document.get('selection_split')}: "
          f"{others}")
    best_rule = SelectionSettings(rule=SelectionRule.BEST)
    for rule, c in ((SelectionRule.BEST, select(evaluation.candidates, key, best_rule)),
                    (SelectionRule.ONE_SE, most_members(within))):  # the bootstrap above, not a second one
        miou = c.metrics["miou"]
        print(f"rule {rule}: {c.key}, test mIoU {miou:.3f} ({100 * (miou - best.metrics['miou']):+.1f} pt over the "
              f"best member on test, {100 * (miou - top.metrics['miou']):+.1f} over the val-top member)")


def recipe(args, config, label: str | None = None) -> dict:
    """Train (or keep, ``--reuse``) the members, evaluate once per ``--tta`` choice; CSV rows under ``label``
    (default: the config as typed). Returns the selected candidate's row of the first evaluation."""
    from minseg.ensemble.evaluate import evaluate_ensemble
    from minseg.enums import TTA
    from minseg.train.ensemble import train_ensemble

    started = time.monotonic()
    results = train_ensemble(config, resume=args.reuse)
    call_seconds = round(time.monotonic() - started)
    epochs = {r.member: r.epochs for r in results}
    member_seconds = round(max(r.wall_seconds for r in results))  # concurrent members: the slowest is the wall
    print(f"training: {len(results)} members, slowest {member_seconds} s; {call_seconds} s in this call"
          f"{' (finished members kept)' if args.reuse else ''}")
    first = None
    base = config.evaluation.name  # "ensemble", or e.g. --set evaluation.name=last-epoch beside it
    for tta in map(TTA, args.tta):
        name = base if tta is TTA.NONE else f"tta-{tta.value}" if base == "ensemble" else f"{base}-tta-{tta.value}"
        config.evaluation = config.evaluation.model_validate(
            {**config.evaluation.model_dump(mode="json"), "tta": tta.value, "name": name})
        evaluated = time.monotonic()
        evaluation = evaluate_ensemble(config)
        rows = report(evaluation, config.evaluation.name)
        for row in rows:
            emit({"date": time.strftime("%Y-%m-%d"), "config": label or _config_label(args), **row,
                  "member_epochs": json.dumps(epochs), "slowest_member_seconds": member_seconds,
                  "train_call_seconds": call_seconds,
                  "evaluation_wall_seconds": round(time.monotonic() - evaluated)}, args.csv)
        first = first or next(row for row in rows if row["selected"])
    return first


def pixel_baseline(args, config) -> None:
    """Per-pixel RGB quadratic discriminant on the run's own split (module doc); one CSV row."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    from minseg.data.classmap import ClassMap
    from minseg.data.geometry import resize_pair
    from minseg.metrics import ConfusionMatrix, metrics_from_confusion

    classmap = ClassMap.from_settings(config.data.classes)
    splits = json.loads((ROOT / config.run.output_uri / config.run.name / "data" / "splits.json").read_text())
    images = {p.stem: p for p in (DATA / "images").iterdir()}
    scale = config.data.tiling.scale

    def pixels(item: str):
        name = item.split("/", 1)[1]
        codes = np.asarray(Image.open(DATA / "masks" / f"{name}.png"))
        image, codes = resize_pair(np.asarray(Image.open(images[name]).convert("RGB")),  # as the tiles are rescaled
                                   codes[..., 0] if codes.ndim == 3 else codes, scale)
        labels, _ = classmap.map_codes(codes)
        return image.reshape(-1, 3).astype(np.float32), labels.reshape(-1)

    rng = np.random.default_rng(0)
    samples = [pixels(item) for item in splits["train"]]
    picks = [rng.choice(len(x), 3000, replace=False) for x, _ in samples]
    x = np.concatenate([s[0][k] for s, k in zip(samples, picks)])
    y = np.concatenate([s[1][k] for s, k in zip(samples, picks)])
    keep = y != classmap.ignore_index
    qda = QuadraticDiscriminantAnalysis(reg_param=0.01).fit(x[keep], y[keep])
    confusion = ConfusionMatrix(classmap.num_classes, classmap.ignore_index)
    for item in splits["test"]:
        x, y = pixels(item)
        confusion.update(torch.from_numpy(qda.predict(x).astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
    metrics = metrics_from_confusion(confusion.matrix.numpy(), classmap.names)
    print(f"pixel-qda-rgb (RGB per pixel, no context), test mIoU {metrics['miou']:.3f}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in zip(metrics["classes"], metrics["iou"])))
    emit({"date": time.strftime("%Y-%m-%d"), "config": _config_label(args), "evaluation": "pixel-baseline",
          "candidate": "pixel-qda-rgb", "test_miou": _miou(metrics), "test_iou_per_class": per_class_iou(metrics)},
         args.csv)


def pooled(args) -> None:
    """Several recipes' test splits as one collection (``--pool``, e.g. the two ore-assemblage recipes): each
    evaluation's confusion matrices, of the selected ensemble and of the member ranked first on validation, summed
    over the union of their classes (matched by name); per-class IoU and mIoU of the pool, one CSV row each."""
    import numpy as np

    from minseg.config import MinsegConfig, load_config
    from minseg.metrics import metrics_from_confusion

    evaluations = []
    for path in args.pool:
        config = load_config(ROOT / path, MinsegConfig)
        where = ROOT / config.run.output_uri / config.run.name / "evaluation" / "ensemble" / "evaluation.json"
        if not where.is_file():
            sys.exit(f"--pool: {path} has no evaluation at {where}; run its recipe first")
        document = json.loads(where.read_text())
        if document.get("selected") is None:  # no candidate fit its TPI budget: nothing selected to pool
            sys.exit(f"--pool: {path}'s evaluation selected no candidate ({document.get('unselected')}); choose one "
                     f"with minseg select {where.parent} --rule best --out {where.parent / 'manifest.json'}")
        evaluations.append(document)
    names: list[str] = []
    for document in evaluations:
        names += [c["name"] for c in document["classes"]["classes"] if c["name"] not in names]
    for label, pick in (("selected", lambda d: d["selected"]), ("member ranked first on validation",
                                                                lambda d: f"member:{d['ranking'][0]}")):
        total = np.zeros((len(names), len(names)))
        for path, document in zip(args.pool, evaluations):
            candidate = next((c for c in document["candidates"] if c["key"] == pick(document)), None)
            if candidate is None:
                sys.exit(f"--pool: {path}'s evaluation has no candidate {pick(document)!r}")
            index = [names.index(c["name"]) for c in document["classes"]["classes"]]
            total[np.ix_(index, index)] += np.asarray(candidate["metrics"]["confusion"])
        metrics = metrics_from_confusion(total, names)
        print(f"pooled {label} over {' + '.join(args.pool)} ({sum(len(d['test_items']) for d in evaluations)} "
              f"test images): mIoU {metrics['miou']:.3f}; " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                         zip(metrics["classes"], metrics["iou"])))
        emit({"date": time.strftime("%Y-%m-%d"), "config": "+".join(args.pool), "evaluation": "pooled",
              "candidate": label, "test_miou": _miou(metrics), "test_iou_per_class": per_class_iou(metrics)}, args.csv)


def split_seeds(args, config_of) -> None:
    """The recipe once per split seed (``--split-seeds``): each seed's run is ``<run.name>-split<seed>``; prints
    each seed's selected ensemble and its gains, then mean ± sd over the seeds (one CSV row, evaluation
    ``split-seeds``). The test split of a small collection holds a few images, so one seed's gain can be the
    split's luck; the spread says how much."""
    import statistics

    name = config_of({}).run.name
    outcomes = []
    for seed in args.split_seeds:
        extra = {"data.split.seed": str(seed), "run.name": f"{name}-split{seed}"}
        label = " ".join([_config_label(args)] + [f"--set {k}={v}" for k, v in extra.items()])
        outcomes.append((seed, recipe(args, config_of(extra), label)))
    columns = ("test_miou", "gain_over_best_member_on_test_pt", "gain_over_val_top_member_pt")
    print(f"\n== the selected ensemble over split seeds {' '.join(map(str, args.split_seeds))} "
          f"(evaluation {outcomes[0][1]['evaluation']}) ==")
    print(f"{'seed':>4} {'selected':<24} {'test mIoU':>9} {'gain over best member (pt)':>27} {'over val-top (pt)':>18}")
    for seed, row in outcomes:
        print(f"{seed:>4} {row['candidate']:<24} {row['test_miou']:>9.3f} {row[columns[1]]:>+27.1f} "
              f"{row[columns[2]]:>+18.1f}")

    def spread(column: str) -> tuple[float, float]:
        values = [row[column] for _, row in outcomes]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    summary = {column: spread(column) for column in columns}
    (miou, miou_sd), (best, best_sd), (top, top_sd) = summary.values()
    print(f"mean ± sd over {len(outcomes)} seeds: test mIoU {miou:.3f} ± {miou_sd:.3f}; gain over the best member on "
          f"test {best:+.1f} ± {best_sd:.1f} pt; over the member ranked first on validation {top:+.1f} ± "
          f"{top_sd:.1f} pt")
    emit({"date": time.strftime("%Y-%m-%d"), "config": _config_label(args) + " --split-seeds "
          + " ".join(map(str, args.split_seeds)), "evaluation": f"split-seeds ({outcomes[0][1]['evaluation']})",
          "candidate": f"selected, mean over {len(outcomes)} split seeds",
          **{column: round(mean, 4) for column, (mean, _) in summary.items()},
          **{f"{column}_sd": round(sd, 4) for column, (_, sd) in summary.items()}}, args.csv)


def _config_label(args) -> str:
    """The config path and its ``--set`` overrides, as typed: a CSV row names the exact run it measured."""
    return " ".join([args.config] + [f"--set {pair}" for pair in args.set or []])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lumenstone_cpu.yaml")
    parser.add_argument("--reuse", action="store_true", help="keep the members a previous run trained (resume)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pixel-baseline", action="store_true", help="score the per-pixel RGB reference instead")
    what.add_argument("--pool", nargs="+", metavar="CONFIG",
                      help="pool the test splits of these recipes' finished evaluations into one table")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.split.seed=1 (repeatable)")
    parser.add_argument("--tta", nargs="+", default=["none", "flips"], choices=["none", "flips", "dihedral"],
                        help="evaluations after training: plain (none) and / or test-time augmentation")
    what.add_argument("--split-seeds", nargs="+", type=int, metavar="SEED",
                      help="the recipe once per split seed (run <run.name>-split<seed>); mean ± sd of the gains")
    parser.add_argument("--csv", default=str(ROOT / "bench" / "results" / "lumenstone_recipe.csv"))
    args = parser.parse_args()
    if args.split_seeds and "data.split.seed" in parse_set_options(args.set):
        parser.error("--split-seeds sets data.split.seed itself (run.name, from the config or --set, names the "
                     "runs: <run.name>-split<seed>)")
    if args.pool:  # reads finished evaluations only
        return pooled(args)
    if not DATA.is_dir():
        sys.exit(f"bench/lumenstone_recipe.py needs the LumenStone sections at {DATA}")
    from minseg.config import MinsegConfig, load_config

    def config_of(extra: dict[str, str]):
        return load_config(ROOT / args.config, MinsegConfig, overrides={**parse_set_options(args.set), **extra})

    if args.split_seeds:
        return split_seeds(args, config_of)
    (pixel_baseline if args.pixel_baseline else recipe)(args, config_of({}))


if __name__ == "__main__":
    main()
