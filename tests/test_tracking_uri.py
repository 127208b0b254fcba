"""`MLFLOW_TRACKING_URI` is honoured as every MLflow user expects: by a trial (as the default of tracking.uri), by
the report and by reproduce, with no --tracking-uri; nothing is written to the default ./mlflow.db."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, runs_of

pytestmark = pytest.mark.slow  # every test here trains in subprocesses or on Ray (tens of seconds)


def test_the_environments_store_is_used_by_run_report_and_reproduce(tmp_path, cache_dir):
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    res = run_cli("dataset=digits", "model=mlp", "trainer.epochs=1", "tracking.experiment=env",
                  f"cache_dir={cache_dir}",
                  cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    runs = runs_of(uri, "env")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"

    rep = run_cli("env", "--out", str(tmp_path / "report"), module="harness.report", cwd=tmp_path, env=env)
    assert rep.returncode == 0, rep.stderr
    assert "| digits" in (tmp_path / "report" / "report.md").read_text() or "digits" in rep.stdout

    again = run_cli(runs.iloc[0].run_id, module="harness.reproduce", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == "REPRODUCED"
    assert not (tmp_path / "mlflow.db").exists()  # the default store was never touched


@pytest.mark.slow  # a CLI trial (about 9 s)
def test_an_explicit_uri_wins_over_the_environment(tmp_path, cache_dir):
    env_uri, explicit = f"sqlite:///{tmp_path / 'env.db'}", f"sqlite:///{tmp_path / 'explicit.db'}"
    res = run_cli("dataset=digits", "model=mlp", "trainer.epochs=1", f"tracking.uri={explicit}",
                  f"cache_dir={cache_dir}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": env_uri})
    assert res.returncode == 0, res.stderr
    assert len(runs_of(explicit)) == 1 and not (tmp_path / "env.db").exists()
