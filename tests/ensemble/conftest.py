import pytest


@pytest.fixture(scope="session")
def trained_run(trained_ensemble):
    """The config of the session's training run (``tests/conftest.py``): three finished tiny members (resunet,
    vgg, halfunet) and two failed ones, trained on synthetic sections with a held-out test split."""
    config, results, _ = trained_ensemble
    assert [r.status for r in results.values()].count("done") == 3, [r.error for r in results.values()]
    return config
