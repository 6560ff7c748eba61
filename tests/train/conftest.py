import pytest

from minseg.synth.minerals import CLASS_NAMES

TINY = {"width": 0.125, "depth": "tiny"}
CLASSES = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}


def training_config(data_uri, output, name, members, **training):
    from minseg.config import MinsegConfig, validate_config

    return validate_config(
        {
            "run": {"name": name, "output_uri": str(output), "seed": 0},
            "ray": {"task_cpus": 0.25},
            "data": {
                "sources": [{"uri": str(data_uri)}],
                "classes": CLASSES,
                "tiling": {"size": 48},
                "split": {"train": 0.75, "val": 0.25, "test": 0.0},
                "cache": True,
            },
            "training": {
                "defaults": {
                    "stages": [{"epochs": 1, "batch_size": 4, "freeze_encoder": True}, {"epochs": 2, "batch_size": 4}],
                    "optimizer": {"lr": 0.003},
                    "scaling": {"cpus_per_worker": 0.25},
                    "max_failures": 0,
                },
                "members": members,
                **training,
            },
        },
        MinsegConfig,
    )
