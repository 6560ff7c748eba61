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


@pytest.fixture(scope="module")
def module_fixture():
    return object()


def test_tests_sharing_a_module_fixture_carry_their_xdist_group(module_fixture, request):
    """tests/conftest.py groups tests that share an expensive fixture for ``--dist loadgroup``; pytest-xdist carries a
    group to its scheduler in the test's node id (``…@group``). pytest 9.2 made that silently ineffective
    (pytest-xdist issue 1386): every shared training run then ran once per worker and the suite took twice as long,
    with nothing failing. If a pytest-xdist release carries groups another way, this check is to be rewritten."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under pytest-xdist --dist loadgroup (the default run), not e.g. with -n 0")
    assert request.node.nodeid.endswith("@tests.test_fixtures"), (
        f"pytest {pytest.__version__} + pytest-xdist lost the test's group ({request.node.nodeid}): tests sharing a "
        "fixture are spread over workers, each rebuilding it; pyproject.toml pins pytest below the breaking release")
