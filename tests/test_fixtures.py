"""The test session's own machinery: a slow Ray start is retried, and fails once, clearly."""

import pytest

import tests.conftest as conftest


def test_ray_start_is_retried_once_then_fails_with_one_message(monkeypatch):
    import ray

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(RuntimeError, match="Ray did not start after 2 attempts: Exception: The current node timed out"):
        conftest.start_test_ray()
    assert len(calls) == 2 and all(c["address"] == "local" for c in calls)


def test_progress_pickles_for_tune_callbacks(capsys):
    """Tune pickles the training progress callback: a Progress holding a (captured) stream must survive it."""
    import pickle

    from minseg.logs import Progress

    progress = Progress(3, "train", unit="epochs")
    progress.advance()
    copy = pickle.loads(pickle.dumps(progress))
    copy.advance(2)
    copy.close()
    assert copy.done == 3
