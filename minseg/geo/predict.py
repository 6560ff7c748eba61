"""Regional prediction: an actor pool scores a window centred in each block of a lattice over the whole grid.

The evidence stack (normalised, padded by half a window) goes into the object store once;
every actor holds all members of the ensemble (loaded once) and scores chunks of window
centres (one chunk per map tile), returning per window each member's P(ore): their mean is the
map, their standard deviation the uncertainty, and each column alone a member's score on held-out
windows (no pass per member). Each map cell takes the value of its block's window (centred on the block's
middle, or on its study cell nearest to it where the middle lies outside the study area), so tiles never
overlap and there is nothing to blend: the map does not depend on how it was cut into tasks, nor on the
order results come back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from minseg.ensemble.runtime import Columns, EnsembleRuntime, MemberRef
from minseg.geo.config import PredictionSettings
from minseg.geo.windows import window_at
from minseg.io.storage import Storage
from minseg.runtime import actor_errors

ORE = 1  # class index of "ore" in the binary prospectivity classifiers


@dataclass
class WindowScores(Columns):
    """Per chunk of window centres: its key, and per window each member's P(ore), a float32 (n, M)
    array, members in the order they were given."""

    OBJECT_COLUMNS = ("members",)

    key: list
    members: list


@dataclass(frozen=True)
class ChunkScores:
    """One chunk's windows: ``members``, each member's P(ore), float32 (n, M)."""

    members: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """The ensemble's P(ore) per window: the members' mean, float32 (n,)."""
        return self.members.mean(1)

    @property
    def std(self) -> np.ndarray:
        """The uncertainty per window: the members' (population) standard deviation, float32 (n,)."""
        return self.members.std(1)


class WindowEnsemble:
    """Ray Data actor: an ``EnsembleRuntime`` of binary classifiers; window centres in, ``WindowScores`` out."""

    def __init__(self, members: list[MemberRef], stack: list, size: int, settings: PredictionSettings,
                 storage: Storage):
        import ray

        self.runtime = EnsembleRuntime(members, 2, storage, gpus=settings.gpus_per_actor,
                                       precision=settings.precision)
        self.padded = ray.get(stack[0])  # zero-copy from the object store
        self.size, self.batch_size = size, settings.batch_size

    def __call__(self, batch: dict) -> dict:
        out = WindowScores(list(batch["key"]), [])
        for centres in batch["centres"]:
            centres = np.asarray(json.loads(centres), np.int64).reshape(-1, 2)
            per_member = np.empty((len(centres), len(self.runtime.models)), np.float32)
            for start in range(0, len(centres), self.batch_size):
                chunk = centres[start : start + self.batch_size]
                windows = np.stack([window_at(self.padded, r, c, self.size) for r, c in chunk])
                inputs = torch.from_numpy(windows).to(self.runtime.device).permute(0, 3, 1, 2).contiguous()
                probabilities = self.runtime.predict(inputs).probabilities[:, :, ORE]  # (M, n)
                per_member[start : start + len(chunk)] = probabilities.T.float().cpu().numpy()
            out.members.append(per_member)
        return out.to_batch()


def block_centres(study: np.ndarray, stride: int) -> np.ndarray:
    """(R, C, 2) int64: the window centre (row, col) of each ``stride`` x ``stride`` block of the grid (R = ceil(rows
    / stride), C likewise): the block's middle cell (clipped to the grid) when it is in the ``study`` area, else the
    block's study cell nearest to it (a block whose middle lies beyond an irregular study edge still scores the study
    cells it holds), else (-1, -1): a block with no study cell is not scored."""
    study = np.asarray(study, bool)
    rows, cols = study.shape
    middle_rows = np.minimum(np.arange(0, rows, stride) + stride // 2, rows - 1)
    middle_cols = np.minimum(np.arange(0, cols, stride) + stride // 2, cols - 1)
    centres = np.stack(np.meshgrid(middle_rows, middle_cols, indexing="ij"), axis=-1)
    for i, j in zip(*np.nonzero(~study[np.ix_(middle_rows, middle_cols)])):
        r0, c0 = i * stride, j * stride
        inside_r, inside_c = np.nonzero(study[r0 : r0 + stride, c0 : c0 + stride])
        if not len(inside_r):
            centres[i, j] = -1
            continue
        nearest = np.argmin((inside_r + r0 - middle_rows[i]) ** 2 + (inside_c + c0 - middle_cols[j]) ** 2)
        centres[i, j] = inside_r[nearest] + r0, inside_c[nearest] + c0
    return centres


def score_windows(members: list[MemberRef], padded: np.ndarray, size: int, chunks: dict,
                  settings: PredictionSettings, storage: Storage, task_options: dict | None = None) -> dict:
    """{key: ChunkScores} for each chunk of (n, 2) window centres, through an actor pool (the prospect job checked
    the cluster can hold it before training: ``runtime.check_actor_pool``)."""
    import ray

    stack_ref = ray.put(padded)
    items = [{"key": key, "centres": json.dumps(np.asarray(centres, np.int64).reshape(-1, 2).tolist())}
             for key, centres in chunks.items() if len(centres)]
    if not items:
        return {}
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 400))).map_batches(
        WindowEnsemble,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
        fn_constructor_kwargs={"members": members, "stack": [stack_ref], "size": size, "settings": settings,
                               "storage": storage},
        **(task_options or {}),
    )
    results = {}
    with actor_errors("prospect prediction actors"):
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            scores = WindowScores.from_batch(batch)
            for key, per_member in zip(scores.key, scores.members):
                results[key.item() if hasattr(key, "item") else key] = ChunkScores(np.asarray(per_member))
    return results


def predict_map(members: list[MemberRef], padded: np.ndarray, size: int, study: np.ndarray,
                settings: PredictionSettings, storage: Storage, extra: dict | None = None,
                task_options: dict | None = None):
    """(probability, uncertainty) rasters (float32, NaN outside the study area) and the scores of the
    ``extra`` window chunks ({key: centres} in, {key: ChunkScores} out, each member's too), in one pass of the
    actor pool."""
    rows, cols = study.shape
    centres = block_centres(study, settings.stride)
    per_tile = max(1, settings.tile // settings.stride)
    chunks, places = {}, {}
    for i0 in range(0, centres.shape[0], per_tile):
        for j0 in range(0, centres.shape[1], per_tile):
            tile = centres[i0 : i0 + per_tile, j0 : j0 + per_tile]
            grid_r, grid_c = np.nonzero(tile[..., 0] >= 0)
            key = f"tile:{i0}:{j0}"
            chunks[key] = tile[grid_r, grid_c]
            places[key] = (grid_r + i0, grid_c + j0)
    for key, windows in (extra or {}).items():
        chunks[f"extra:{key}"] = windows
    results = score_windows(members, padded, size, chunks, settings, storage, task_options)
    mean_lattice = np.full(centres.shape[:2], np.nan, np.float32)
    std_lattice = np.full_like(mean_lattice, np.nan)
    for key, (grid_r, grid_c) in places.items():
        if len(grid_r):
            scores = results[key]
            mean_lattice[grid_r, grid_c], std_lattice[grid_r, grid_c] = scores.mean, scores.std
    expand = np.ones((settings.stride, settings.stride), np.float32)
    probability = np.kron(mean_lattice, expand)[:rows, :cols]
    uncertainty = np.kron(std_lattice, expand)[:rows, :cols]
    probability[~study], uncertainty[~study] = np.nan, np.nan
    extras = {key.split(":", 1)[1]: value for key, value in results.items() if key.startswith("extra:")}
    return probability, uncertainty, extras
