"""How a member's workers read its datasets, on real Ray Data: training tiles equally, validation / test whole."""

from concurrent.futures import ThreadPoolExecutor

from minseg.train.ensemble import _ordered_ingest
from minseg.train.ingest import equal_shares


def test_two_workers_score_every_validation_and_test_tile_once_and_train_on_equal_shares(ray_session):
    """Ray Train's default split drops up to workers - 1 rows of every dataset, the same ones every epoch: validation
    scores that rank members would leave tiles out, and training would never see them. Training shares stay equal
    (DDP steps in lockstep)."""
    import ray

    sizes = {"train": 7, "val": 5, "test": 3}
    datasets = {name: ray.data.range(size, override_num_blocks=size) for name, size in sizes.items()}
    datasets["train"] = equal_shares(datasets["train"], 7, 2)
    iterators = _ordered_ingest(2).configure(datasets, world_size=2, worker_handles=None, worker_node_ids=None)

    def rows(rank: int, name: str) -> list[int]:
        return [int(row["id"]) for row in iterators[rank][name].iter_rows()]

    with ThreadPoolExecutor(2) as pool:  # a split's iterators start each pass together: read them at once
        shares = {name: list(pool.map(rows, [0, 1], [name, name])) for name in sizes}
    first, second = shares["train"]  # 7 tiles: the first once more, 4 each, none left out
    assert len(first) == len(second) == 4 and sorted(first + second) == [0, *range(7)]
    assert equal_shares(datasets["val"], 6, 2) is datasets["val"]  # a count that divides: as it is
    for name in ("val", "test"):
        first, second = shares[name]
        assert sorted(first + second) == list(range(sizes[name])), name


def test_one_worker_reads_its_datasets_whole(ray_session):
    import ray

    datasets = {"train": ray.data.range(7), "val": ray.data.range(5)}
    (iterators,) = _ordered_ingest(1).configure(datasets, world_size=1, worker_handles=None, worker_node_ids=None)
    assert [int(row["id"]) for row in iterators["val"].iter_rows()] == list(range(5))  # in order, whole
    assert [int(row["id"]) for row in iterators["train"].iter_rows()] == list(range(7))
