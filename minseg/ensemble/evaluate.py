"""Evaluate members, rank them, build RUEL-k in every fusion mode, select one, write its manifest.

Passes over the data (Ray Data actor pool; each actor holds every member, loaded once):

1. the ranking split (validation by default): member metrics, and a pixel sample of
   member probabilities for fitting learned weights;
2. the test split: every member, and every RUEL-k x fusion mode built from the ranking,
   with time per image (TPI) measured the same way for all of them.

Full images are tiled with overlap and their probabilities blended (never resized).
Confusion matrices are accumulated per image and merged on the driver.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from minseg.config.schema import MinsegConfig
from minseg.data.classmap import ClassMap
from minseg.data.pipeline import PreparedData, load_example, prepare_data
from minseg.enums import FusionMode, Task
from minseg.ensemble.config import EvaluationSettings
from minseg.ensemble.manifest import (
    EnsembleManifest,
    ManifestFusion,
    ManifestMember,
    ManifestTiling,
    file_sha256,
    load_models,
    write_manifest,
)
from minseg.ensemble.voting import fuse, rank_weights
from minseg.inference.sliding import predict_image
from minseg.io.storage import ObjectNotFoundError, Storage, absolute_uri, join_uri
from minseg.logs import get_logger, log_event
from minseg.metrics import ConfusionMatrix, metric_value, metrics_from_confusion
from minseg.runtime import init_ray

log = get_logger("ensemble")


@dataclass
class MemberSpec:
    name: str
    model: str
    model_options: dict
    checkpoint: str
    task: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Combination:
    """A candidate: one member alone, or the top-k members fused in one mode."""

    key: str
    members: list[str]
    mode: FusionMode | None
    weights: list | None = None
    metrics: dict = field(default_factory=dict)
    tpi: float = 0.0


def discover_members(storage: Storage, run_uri: str, names: list[str] | None) -> list[MemberSpec]:
    """Finished members of a training run (their best checkpoints), checked for one class map."""
    try:
        table = json.loads(storage.read_text(join_uri(run_uri, "members.json")))["members"]
    except ObjectNotFoundError:
        raise ValueError(f"{run_uri}: no members.json (is this a training run? run 'minseg train' first)") from None
    done = {row["member"]: row for row in table if row["status"] == "done" and row.get("fold") is None}
    wanted = names or list(done)
    missing = [n for n in wanted if n not in done]
    if missing:
        raise ValueError(f"members not finished in {run_uri}: {', '.join(missing)} (finished: {', '.join(done)})")
    specs, classes = [], None
    for name in wanted:
        checkpoint = done[name]["best_checkpoint"]
        member = json.loads(storage.read_text(join_uri(checkpoint, "member.json")))
        document = json.loads(storage.read_text(join_uri(checkpoint, "classes.json")))
        if classes is not None and document != classes[1]:
            raise ValueError(f"member {name!r} was trained on a different class map than {classes[0]!r}")
        classes = classes or (name, document)
        from minseg.models import get_entry

        specs.append(MemberSpec(name, member["model"], member["model_options"], checkpoint,
                                str(get_entry(member["model"]).task)))
    if len(specs) < 1:
        raise ValueError(f"{run_uri}: no finished members to evaluate")
    return specs


class EnsembleEvaluator:
    """Ray Data actor: holds every member; per image, predicts, fuses and counts."""

    def __init__(self, members: list[dict], classes: dict, data: dict, spec: dict):
        from minseg.config.schema import StorageSettings
        from minseg.data.config import DataSettings

        self.storage = Storage(StorageSettings.model_validate(spec["storage"]))
        self.classmap = ClassMap.from_document(classes)
        self.data = DataSettings.model_validate(data)
        self.spec = spec
        self.device = torch.device("cuda" if torch.cuda.is_available() and spec["gpus"] > 0 else "cpu")
        self.models = load_models([MemberSpec(**m) for m in members], self.classmap.num_classes, self.storage,
                                  self.device)
        self.index = {m["name"]: i for i, m in enumerate(members)}

    def __call__(self, batch: dict) -> dict:
        rows = {"item_id": [], "confusion": [], "member_seconds": [], "fusion_seconds": [], "sample": [], "preview": []}
        num_classes, combos = self.classmap.num_classes, self.spec["combos"]
        for text in batch["item"]:
            item = json.loads(text)
            image, truth = load_example(item, self.classmap, self.data.limits, self.storage, self.data.tiling.scale)
            timings: list[float] = []
            probs = predict_image(self.models, image, num_classes, self.spec["tile"], self.spec["overlap"],
                                  self.spec["mean"], self.spec["std"], self.device, self.spec["batch_size"],
                                  self.spec["blend"], self.spec["tta"], timings)
            probs_t = torch.from_numpy(probs)
            target = torch.from_numpy(truth.astype(np.int64))
            matrices = [ConfusionMatrix(num_classes, self.classmap.ignore_index).update(probs_t[m : m + 1], target[None]).matrix
                        for m in range(len(self.models))]
            fusion_seconds, fused_labels = [], {}
            for combo in combos:
                started = time.perf_counter()
                members = probs_t[[self.index[n] for n in combo["members"]]]
                weights = torch.tensor(combo["weights"], dtype=torch.float32) if combo["mode"] == "learned" else None
                labels, _ = fuse(members, combo["mode"], weights)
                fusion_seconds.append(time.perf_counter() - started)
                matrices.append(ConfusionMatrix(num_classes, self.classmap.ignore_index).update(labels[None], target[None]).matrix)
                fused_labels[combo["key"]] = labels
            rows["item_id"].append(item["item_id"])
            rows["confusion"].append(torch.stack(matrices).numpy())
            rows["member_seconds"].append(np.array(timings))
            rows["fusion_seconds"].append(np.array(fusion_seconds or [0.0]))
            rows["sample"].append(self._sample(item["item_id"], probs, truth))
            rows["preview"].append(self._preview(item["item_id"], image, truth, probs_t, fused_labels))
        return {k: (np.stack(v) if k in ("confusion",) else _object_array(v)) for k, v in rows.items()}

    def _sample(self, item_id: str, probs: np.ndarray, truth: np.ndarray):
        """Seeded random pixels (member probabilities + truth) for fitting learned weights."""
        count = self.spec["sample_per_image"]
        if not count:
            return None
        valid = np.flatnonzero(truth.ravel() != self.classmap.ignore_index)
        rng = np.random.default_rng(zlib.crc32(item_id.encode()))  # stable across processes, unlike hash()
        chosen = rng.choice(valid, size=min(count, valid.size), replace=False) if valid.size else valid
        flat = probs.reshape(probs.shape[0], probs.shape[1], -1)[:, :, chosen]
        return {"probs": flat.astype(np.float16), "truth": truth.ravel()[chosen].astype(np.uint8)}

    def _preview(self, item_id, image, truth, probs, fused):
        if item_id not in self.spec["preview_ids"]:
            return None
        # every candidate's labels: which one is selected is known only after this pass
        labels = {f"member:{name}": probs[i].argmax(0).numpy().astype(np.uint8) for name, i in self.index.items()}
        labels.update({key: value.numpy().astype(np.uint8) for key, value in fused.items()})
        return {"item_id": item_id, "image": image, "truth": truth, "labels": labels}


def _object_array(values):
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def run_pass(items: list[dict], members: list[MemberSpec], prepared: PreparedData, config: MinsegConfig,
             settings: EvaluationSettings, combos: list[dict], sample_per_image: int = 0,
             preview_ids=()) -> list[dict]:
    """One pass of the actor pool over ``items``; returns one row per image."""
    import ray

    tile, overlap = settings.tiling(config.data.tiling.size)
    spec = {
        "storage": config.storage.model_dump(mode="json"),
        "tile": tile,
        "overlap": overlap,
        "mean": prepared.normalization["mean"],
        "std": prepared.normalization["std"],
        "batch_size": settings.batch_size,
        "blend": str(settings.blend),
        "tta": str(settings.tta),
        "gpus": settings.gpus_per_actor,
        "combos": combos,
        "sample_per_image": sample_per_image,
        "preview_ids": list(preview_ids),
    }
    dataset = ray.data.from_items([{"item": json.dumps(item)} for item in items])
    results = dataset.map_batches(
        EnsembleEvaluator,
        fn_constructor_kwargs={"members": [m.as_dict() for m in members], "classes": prepared.classmap.to_document(),
                               "data": config.data.model_dump(mode="json"), "spec": spec},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
    )
    return results.take_all()


def _candidates(ranked: list[str], settings: EvaluationSettings, learned: dict[int, list]) -> list[dict]:
    n = len(ranked)
    k_max = min(settings.k_max or n, n)
    combos = []
    for k in range(max(2, settings.k_min), k_max + 1):
        top = ranked[:k]
        for mode in settings.modes:
            mode = FusionMode(mode)
            if mode is FusionMode.LEARNED:
                if k not in learned:
                    continue
                weights = learned[k]
            elif mode in (FusionMode.WV, FusionMode.WEIGHTED_SOFT):
                weights = rank_weights(k).tolist()
            else:
                weights = [1] * k
            combos.append({"key": f"RUEL-{k}-{mode.value.upper()}", "members": top, "mode": mode.value, "weights": weights})
    return combos


def fit_learned_weights(samples: list[dict], k: int, num_classes: int, key: str, class_names, per_class: bool,
                        ignore_index: int) -> list:
    """Coordinate ascent on validation pixels: weights per member (or per member and class)
    maximising the ranking key of the weighted soft vote. Never sees test data."""
    probs = torch.from_numpy(np.concatenate([s["probs"][:k] for s in samples], axis=2).astype(np.float32))
    truth = torch.from_numpy(np.concatenate([s["truth"] for s in samples]).astype(np.int64))
    shape = (k, num_classes) if per_class else (k,)
    weights = torch.ones(shape)
    grid = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]

    def score(w):
        labels, _ = fuse(probs, FusionMode.LEARNED, w)
        matrix = ConfusionMatrix(num_classes, ignore_index).update(labels[None], truth[None]).matrix.numpy()
        value = metric_value(metrics_from_confusion(matrix, class_names), key)
        return -1.0 if np.isnan(value) else value

    best = score(weights)
    for _ in range(3):
        improved = False
        for index in np.ndindex(*shape):
            for value in grid:
                trial = weights.clone()
                trial[index] = value
                if trial.sum() <= 0:
                    continue
                result = score(trial)
                if result > best + 1e-9:
                    best, weights, improved = result, trial, True
        if not improved:
            break
    return weights.tolist()


def _metrics_for(rows: list[dict], index: int, class_names) -> dict:
    matrix = np.sum([row["confusion"][index] for row in rows], axis=0)
    metrics = metrics_from_confusion(matrix, class_names)
    metrics["confusion"] = matrix.tolist()
    return metrics


def rank_members(metrics: dict[str, dict], key: str) -> list[str]:
    """Best first by the key; ties broken by name, deterministically."""
    def value(name):
        v = metric_value(metrics[name], key)
        return -np.inf if np.isnan(v) else v

    return sorted(metrics, key=lambda name: (-value(name), name))


def select(candidates: list[Combination], key: str, rule: str, budget: float | None) -> Combination:
    pool = [c for c in candidates if rule != "tpi_budget" or c.tpi <= budget]
    if not pool:
        fastest = min(candidates, key=lambda c: c.tpi)
        raise ValueError(f"no candidate fits the TPI budget of {budget:g} s per image (fastest: {fastest.key}, "
                         f"{fastest.tpi:.3f} s)")
    def value(c):
        v = metric_value(c.metrics, key)
        return -np.inf if np.isnan(v) else v

    return sorted(pool, key=lambda c: (-value(c), c.tpi, c.key))[0]


def evaluated_run_uri(config: MinsegConfig) -> str:
    settings = config.evaluation or EvaluationSettings()
    return absolute_uri(settings.run_uri) if settings.run_uri else config.run.uri


def evaluation_uri(config: MinsegConfig) -> str:
    """Where an evaluation writes its reports and ``manifest.json``."""
    return join_uri(evaluated_run_uri(config), "evaluation", (config.evaluation or EvaluationSettings()).name)


def evaluate_ensemble(config: MinsegConfig) -> dict:
    """The evaluation job: see the module doc. Returns the evaluation document."""
    from minseg.ensemble.reports import write_reports

    if config.data is None:
        raise ValueError("evaluation needs the 'data' section the members were trained with")
    settings = config.evaluation or EvaluationSettings()
    storage = Storage(config.storage)
    run_uri = evaluated_run_uri(config)
    members = discover_members(storage, run_uri, settings.members)
    tasks = {m.task for m in members}
    if tasks != {str(Task.SEGMENTATION)}:
        raise ValueError("ensemble evaluation covers segmentation members; classifiers are evaluated by training")
    init_ray(config.ray)
    prepared = prepare_data(config.data, Task.SEGMENTATION, config.run.seed, storage, join_uri(run_uri, "data"),
                            config.ray.task_cpus)
    _check_same_splits(storage, run_uri, prepared)
    names = list(prepared.classmap.names)
    if not prepared.splits["test"]:
        raise ValueError("the test split is empty: nothing to evaluate the ensemble on")
    rank_split = settings.rank_on if prepared.splits[settings.rank_on] else "test"

    # pass 1: rank members (and sample pixels for learned weights) on the ranking split
    sample = max(1, settings.weight_fit_pixels // max(1, len(prepared.splits[rank_split])))
    wants_learned = FusionMode.LEARNED in settings.modes and rank_split != "test"
    rank_rows = run_pass(prepared.splits[rank_split], members, prepared, config, settings, [],
                         sample_per_image=sample if wants_learned else 0)
    rank_metrics = {m.name: _metrics_for(rank_rows, i, names) for i, m in enumerate(members)}
    ranked = rank_members(rank_metrics, settings.rank_key)
    log_event(log, "ensemble.ranked", split=rank_split, key=settings.rank_key, order=",".join(ranked))
    learned = {}
    if wants_learned:
        samples = [row["sample"] for row in rank_rows if row["sample"] is not None]
        order = [next(i for i, m in enumerate(members) if m.name == name) for name in ranked]
        samples = [{"probs": s["probs"][order], "truth": s["truth"]} for s in samples]
        for k in range(max(2, settings.k_min), min(settings.k_max or len(ranked), len(ranked)) + 1):
            learned[k] = fit_learned_weights(samples, k, len(names), settings.rank_key, names,
                                             settings.learned_per_class, prepared.classmap.ignore_index)

    # pass 2: everything on the test split
    combos = _candidates(ranked, settings, learned)
    preview_ids = [i["item_id"] for i in prepared.splits["test"][: settings.overlays]]
    test_rows = run_pass(prepared.splits["test"], members, prepared, config, settings, combos, preview_ids=preview_ids)
    member_tpi = np.mean([row["member_seconds"] for row in test_rows], axis=0)
    fusion_tpi = np.mean([row["fusion_seconds"] for row in test_rows], axis=0)
    candidates = []
    for i, member in enumerate(members):
        candidates.append(Combination(f"member:{member.name}", [member.name], None, [1],
                                      _metrics_for(test_rows, i, names), float(member_tpi[i])))
    for j, combo in enumerate(combos):
        tpi = float(sum(member_tpi[[m.name for m in members].index(n)] for n in combo["members"]) + fusion_tpi[j])
        candidates.append(Combination(combo["key"], combo["members"], FusionMode(combo["mode"]), combo["weights"],
                                      _metrics_for(test_rows, len(members) + j, names), tpi))
    chosen = select(candidates, settings.rank_key, settings.selection.rule, settings.selection.tpi_budget_s)
    log_event(log, "ensemble.selected", choice=chosen.key, key=settings.rank_key,
              value=round(metric_value(chosen.metrics, settings.rank_key), 4), tpi=round(chosen.tpi, 4))

    document = {
        "run": run_uri,
        "rank_key": settings.rank_key,
        "rank_split": rank_split,
        "ranking": ranked,
        "rank_metrics": {n: _strip(m) for n, m in rank_metrics.items()},
        "members": {m.name: {"model": m.model, "checkpoint": m.checkpoint, "model_options": m.model_options}
                    for m in members},
        "candidates": [{"key": c.key, "members": c.members, "mode": c.mode.value if c.mode else None,
                        "weights": c.weights, "tpi": c.tpi, "metrics": c.metrics} for c in candidates],
        "selected": chosen.key,
        "selection": settings.selection.model_dump(mode="json"),
        "tiling": dict(zip(("tile", "overlap"), settings.tiling(config.data.tiling.size)), blend=str(settings.blend),
                       scale=config.data.tiling.scale),
        "tta": str(settings.tta),
        "classes": prepared.classmap.to_document(),
        "normalization": prepared.normalization,
        "test_items": [i["item_id"] for i in prepared.splits["test"]],
    }
    out = evaluation_uri(config)
    storage.write_text(join_uri(out, "evaluation.json"), json.dumps(document, indent=2, default=float))
    manifest = build_manifest(document, chosen.key, storage, settings.name)
    write_manifest(manifest, join_uri(out, "manifest.json"), storage)
    previews = [row["preview"] for row in test_rows if row["preview"] is not None]
    write_reports(document, prepared, previews, out, storage, settings)
    document["manifest_uri"] = join_uri(out, "manifest.json")
    log_event(log, "ensemble.done", output=out, selected=chosen.key)
    return document


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "confusion"}


def _check_same_splits(storage: Storage, run_uri: str, prepared: PreparedData) -> None:
    try:
        saved = json.loads(storage.read_text(join_uri(run_uri, "data", "splits.json")))
    except ObjectNotFoundError:
        return
    for split in ("train", "val", "test"):
        now = [i["item_id"] for i in prepared.splits[split]]
        if split in saved and sorted(saved[split]) != sorted(now):
            raise ValueError(f"the {split} split differs from the one the members were trained with "
                             f"({join_uri(run_uri, 'data', 'splits.json')}); the data or the split settings changed")


def build_manifest(document: dict, key: str, storage: Storage, name: str) -> EnsembleManifest:
    """The manifest for one candidate of an evaluation document."""
    from datetime import datetime, timezone

    candidate = next((c for c in document["candidates"] if c["key"] == key), None)
    if candidate is None:
        raise ValueError(f"no candidate {key!r}; candidates: {', '.join(c['key'] for c in document['candidates'])}")
    members = []
    for rank, member in enumerate(candidate["members"]):
        info = document["members"][member]
        members.append(ManifestMember(
            name=member, model=info["model"], model_options=info["model_options"], checkpoint=info["checkpoint"],
            sha256=file_sha256(storage, join_uri(info["checkpoint"], "model.pt")), rank=rank,
            metrics={k: v for k, v in document["rank_metrics"][member].items() if not isinstance(v, list)},
        ))
    mode = candidate["mode"] or FusionMode.SOFT.value  # a single member: its own probabilities
    return EnsembleManifest(
        name=name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), source_run=document["run"],
        members=members, fusion=ManifestFusion(mode=mode, weights=candidate["weights"], tta=document["tta"]),
        classes=document["classes"], tiling=ManifestTiling(**document["tiling"]),
        normalization=document["normalization"],
        selection={**document["selection"], "key": document["rank_key"], "candidate": key},
        metrics={"tpi_s": candidate["tpi"], **{k: v for k, v in candidate["metrics"].items() if k != "confusion"}},
    )
