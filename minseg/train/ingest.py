"""How a member's Ray Train workers read its datasets (``ray.train.DataConfig``).

Ray Train's own ``DataConfig`` splits every dataset with ``streaming_split(equal=True)``: each worker gets as many
rows, the remainder (up to workers - 1) dropped; with the order kept, the same last tiles every epoch. Training needs
equal shares (DDP workers step in lockstep): ``equal_shares`` repeats the first few tiles so that the count divides,
and none is left out. Validation and a fold's test part must not drop anything either (the scores that rank members
and pick the checkpoint): ``MemberIngest`` splits them unequally, every tile scored once by one worker, the scores
summed across workers (``minseg.train.loop.evaluate``).
"""

from __future__ import annotations

import copy

import ray.train
from ray.data import ExecutionOptions

#: the one dataset split equally: DDP needs the same number of steps on every worker
TRAIN = "train"


class MemberIngest(ray.train.DataConfig):
    """``train`` split equally among the workers, every other dataset (``val``, ``test``) split whole among them;
    one execution option for all (block order kept: a member reads its tiles in one order in every run)."""

    def __init__(self, options: ExecutionOptions):
        super().__init__(datasets_to_split=[TRAIN], execution_options=options)
        self._ingest_options = options

    def configure(self, datasets, world_size: int, worker_handles, worker_node_ids, **kwargs):
        """One ``DataIterator`` per worker and dataset (Ray Train's contract; V2 calls it once per dataset)."""
        output = super().configure({name: ds for name, ds in datasets.items() if name == TRAIN}, world_size,
                                   worker_handles, worker_node_ids, **kwargs)
        for name, dataset in datasets.items():
            if name == TRAIN:
                continue
            dataset = dataset.copy(dataset)
            if dataset.name is None:
                dataset.set_name(name)
            dataset.context.execution_options = copy.deepcopy(self._ingest_options)
            splits = dataset.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


def equal_shares(train, tiles: int, workers: int):
    """The training dataset of ``tiles`` rows with its first ``-tiles % workers`` rows once more at its end, so that
    Ray Train's equal split among ``workers`` drops none (each worker gets ``ceil(tiles / workers)``; those few tiles
    are seen twice an epoch). Unchanged when the count divides."""
    pad = -tiles % workers
    return train.union(train.limit(pad)) if pad else train
