from pathlib import Path

from minseg.synth.minerals import CLASS_NAMES

TINY = {"width": 0.125, "depth": "tiny"}
CLASSES = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}


def training_config(data_uri, output, name, members, data: dict | None = None, ray: dict | None = None,
                    **training):
    from minseg.config import MinsegConfig, validate_config

    return validate_config(
        {
            "run": {"name": name, "output_uri": str(output), "seed": 0},
            "ray": {"task_cpus": 0.25, **(ray or {})},
            "data": {
                "sources": [{"uri": str(data_uri)}],
                "classes": CLASSES,
                "tiling": {"size": 48},
                "split": {"train": 0.75, "val": 0.25, "test": 0.0},
                "cache": True,
                **(data or {}),
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


class BackgroundTraining:
    """``train_ensemble(config)`` on a thread, so a test can act (kill workers) once a member's first
    checkpoint exists; ``rows`` holds the members table when it ends."""

    def __init__(self, config, member: str, timeout_s: float = 400):
        import threading
        import time

        from minseg.train.ensemble import train_ensemble

        self.outcome: dict = {}
        self.pointer = Path(config.run.uri) / "members" / member / "checkpoints" / "last.json"
        self.deadline = time.monotonic() + timeout_s
        self.thread = threading.Thread(target=lambda: self.outcome.setdefault("rows", train_ensemble(config)))
        self.thread.start()

    def wait_for_checkpoint(self, poll_s: float = 0.3) -> dict:
        """The member's ``last.json`` pointer once written (fails the test if it never is)."""
        import json
        import time

        while not self.pointer.exists() and time.monotonic() < self.deadline and self.thread.is_alive():
            time.sleep(poll_s)
        assert self.pointer.exists(), "no checkpoint was written"
        return json.loads(self.pointer.read_text())

    def kill_workers(self) -> list[int]:
        """SIGKILL the training workers (retrying until some are found or time runs out)."""
        import time

        from tests.support.processes import kill_processes_titled

        killed: list[int] = []
        while not killed and time.monotonic() < self.deadline:
            killed = kill_processes_titled("ray::RayTrainWorker")
            time.sleep(0.1)
        return killed

    def join(self, timeout_s: float = 900) -> list:
        self.thread.join(timeout=timeout_s)
        assert not self.thread.is_alive(), "training did not finish"
        return self.outcome["rows"]
