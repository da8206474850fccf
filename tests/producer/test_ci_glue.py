"""The CI glue: action.yml and the GitLab template, their scripts run for real under bash.

A fake ``fanout`` first on PATH records the argv and environment it was started with, prints a
release document and exits with a chosen code, so each test sees exactly what a runner would
hand fanout, and what the step leaves behind (outputs, summary, dotenv report). One test runs
the action's script with the real fanout against a real ``fanout serve``, worker and registries.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import images
from tests.support.cli import write_docker_config
from tests.support.queue import VENV_BIN, RedisServer, ledger_for, queue_env, start_worker
from tests.support.registries import RegistrySet
from tests.support.serve import serving, token_toml

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
GITLAB = ROOT / "ci" / "gitlab" / "fanout.gitlab-ci.yml"

TOKEN = "fo-tok-8c1d9e55f0a2-do-not-leak"
SERVER = "https://fanout.internal.example"
SOURCE = "ghcr.io/acme/app@sha256:" + "ab" * 32
HOSTILE = ["v1; rm -rf /", "$(id)", "`id`", "-x", "a'b\"c"]
RELEASE = {
    "id": "r-01J9ZC3", "source": SOURCE, "digest": "sha256:" + "ab" * 32, "done": True,
    "ok": True, "exit_code": 0,
    "destinations": {
        "quay.io/acme/app": {"destination": "quay.io/acme/app", "state": "succeeded",
                             "attempts": 1, "last_error": None},
        "harbor.corp/acme/app": {"destination": "harbor.corp/acme/app", "state": "failed",
                                 "attempts": 3, "last_error": "denied | quota"},
    },
}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def action_step(name: str) -> dict[str, Any]:
    return next(s for s in load(ACTION)["runs"]["steps"] if s.get("name") == name)


# --- A fake fanout (and pip, python3): record argv and environment, print, exit -------------

@dataclass
class Fake:
    """A program on PATH that records how it was started."""

    record: Path

    @property
    def called(self) -> bool:
        return (self.record / "argv").exists()

    def argv(self) -> list[str]:
        return (self.record / "argv").read_bytes().decode().split("\0")[:-1]

    def env(self) -> dict[str, str]:
        entries = (self.record / "env").read_bytes().decode().split("\0")[:-1]
        return dict(entry.split("=", 1) for entry in entries)


def install_fake(bin_dir: Path, name: str, *, code: int = 0, stdout: str = "") -> Fake:
    bin_dir.mkdir(exist_ok=True)
    record = bin_dir.parent / f"{name}-record"
    record.mkdir()
    (record / "stdout").write_text(stdout)
    q = shlex.quote
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s\\0' \"$a\"; done > {q(str(record / 'argv'))}\n"
        f"env -0 > {q(str(record / 'env'))}\n"
        f"cat {q(str(record / 'stdout'))}\n"
        f"exit {code}\n"
    )
    script.chmod(0o755)
    return Fake(record)


def run_bash(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """As a runner does: GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail {0}`."""
    path = cwd / "step.sh"
    path.write_text(script)
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def base_env(bin_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
            "LANG": "C.UTF-8"}


# --- GitHub: render the ${{ }} expressions a step's env uses --------------------------------

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def render(text: str, inputs: dict[str, str], action_path: str) -> str:
    """The expressions action.yml's env blocks use: inputs.x, github.action_path, `a || b`."""

    def operand(name: str) -> str:
        if name == "github.action_path":
            return action_path
        if name.startswith("inputs."):
            return inputs[name.removeprefix("inputs.")]
        raise AssertionError(f"an expression the test cannot render: {name}")

    def evaluate(match: re.Match[str]) -> str:
        value = ""
        for name in match.group(1).split("||"):
            value = operand(name.strip())
            if value:
                break
        return value

    return EXPRESSION.sub(evaluate, text)


def action_inputs(**given: str) -> dict[str, str]:
    inputs = {name: str(spec.get("default", "")) for name, spec in load(ACTION)["inputs"].items()}
    inputs.update({name.replace("_", "-"): value for name, value in given.items()})
    return inputs


@dataclass
class StepRun:
    result: subprocess.CompletedProcess[str]
    outputs: dict[str, str]
    summary: str
    fanout: Fake

    def everything_written(self) -> str:
        return "\n".join([self.result.stdout, self.result.stderr, self.summary,
                          *self.outputs.values(), *self.fanout.argv()])


def run_action(tmp_path: Path, *, code: int = 0, stdout: str = "", real: bool = False,
               **given: str) -> StepRun:
    """The enqueue step as a runner runs it: with a fake fanout first on PATH, or (``real``) the
    venv's own fanout."""
    tmp_path.mkdir(exist_ok=True)
    fanout = install_fake(tmp_path / "bin", "fanout", code=code, stdout=stdout)
    bin_dir = VENV_BIN if real else tmp_path / "bin"  # real: the fake is there, never called
    step = action_step("Enqueue the release")
    inputs = action_inputs(**{"server": SERVER, "token": TOKEN, "source": SOURCE, **given})
    env = base_env(bin_dir, tmp_path)
    env.update({k: render(str(v), inputs, str(ROOT)) for k, v in step["env"].items()})
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    output.touch()
    summary.touch()
    env.update(GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(summary))
    result = run_bash(step["run"], env, tmp_path)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return StepRun(result, outputs, summary.read_text(), fanout)


# --- action.yml as written -----------------------------------------------------------------

def test_action_declares_its_inputs_outputs_and_steps() -> None:
    action = load(ACTION)
    inputs = action["inputs"]
    required = {n for n, spec in inputs.items() if spec.get("required")}
    assert required == {"server", "token", "source"}
    assert set(inputs) == {"server", "token", "source", "to", "destinations", "tags", "wait",
                           "timeout", "python-version", "fanout-spec"}
    assert (inputs["wait"]["default"], inputs["timeout"]["default"]) == ("true", "1800")
    assert action["runs"]["using"] == "composite"
    assert action["outputs"]["release-id"]["value"] == "${{ steps.enqueue.outputs.release-id }}"
    assert action["outputs"]["exit-code"]["value"] == "${{ steps.enqueue.outputs.exit-code }}"
    setup = action["runs"]["steps"][0]
    assert setup["uses"].startswith("actions/setup-python@")
    assert setup["if"] == "inputs.python-version != ''"


def test_no_action_script_pastes_an_expression_into_its_text() -> None:
    # ${{ }} inside `run:` is substituted into the script before bash parses it: injection.
    scripts = [s["run"] for s in load(ACTION)["runs"]["steps"] if "run" in s]
    assert len(scripts) == 2
    for script in scripts:
        assert "${{" not in script
    for step in load(ACTION)["runs"]["steps"]:
        assert step.get("shell", "bash") == "bash"


def test_the_token_reaches_the_step_as_env_only() -> None:
    text = ACTION.read_text()
    assert text.count("inputs.token") == 1
    assert action_step("Enqueue the release")["env"]["FANOUT_TOKEN"] == "${{ inputs.token }}"


# --- action.yml run for real ----------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 1, 3])
def test_action_runs_fanout_and_passes_its_exit_code_on(tmp_path: Path, code: int) -> None:
    run = run_action(tmp_path, code=code, stdout=json.dumps(RELEASE, indent=2), to="release",
                     tags="1.4.2\n latest ,")

    assert run.result.returncode == code, run.result.stderr
    assert run.fanout.argv() == ["enqueue", f"--server={SERVER}", "--json", "--to=release",
                                 "--tag=1.4.2", "--tag=latest", "--wait", "--timeout=1800",
                                 "--", SOURCE]
    assert run.fanout.env()["FANOUT_TOKEN"] == TOKEN
    assert run.outputs == {"exit-code": str(code), "release-id": "r-01J9ZC3"}
    assert "r-01J9ZC3" in run.summary
    assert "| harbor.corp/acme/app | failed | 3 | denied \\| quota |" in run.summary
    assert f"exit {code}" in run.summary
    assert TOKEN not in run.everything_written()


def test_hostile_inputs_arrive_as_literal_arguments(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    tags = "\n".join([*HOSTILE, f"$(touch {canary})"])
    destinations = f"quay.io/acme/app, `touch {canary}`\n--help"
    run = run_action(tmp_path, stdout=json.dumps(RELEASE), tags=tags, destinations=destinations,
                     to="-rel; id", timeout="$(id)", wait="false")

    assert run.result.returncode == 0, run.result.stderr
    assert run.fanout.argv() == [
        "enqueue", f"--server={SERVER}", "--json", "--to=-rel; id",
        *[f"--tag={t}" for t in HOSTILE], f"--tag=$(touch {canary})",
        "--", SOURCE, "quay.io/acme/app", f"`touch {canary}`", "--help",
    ]
    assert not canary.exists()


def test_action_nothing_enqueued_leaves_an_empty_release_id(tmp_path: Path) -> None:
    run = run_action(tmp_path, code=2, stdout="", destinations="quay.io/acme/app")

    assert run.result.returncode == 2
    assert run.fanout.argv()[-2:] == [SOURCE, "quay.io/acme/app"]
    assert run.outputs == {"exit-code": "2", "release-id": ""}
    assert "nothing was enqueued" in run.summary


def test_action_reads_several_releases(tmp_path: Path) -> None:
    second = {**RELEASE, "id": "r-02"}
    run = run_action(tmp_path, stdout=json.dumps({"releases": [RELEASE, second]}))

    assert run.outputs["release-id"] == "r-01J9ZC3 r-02"


@pytest.mark.parametrize(("given", "complaint"), [
    ({"token": ""}, "'token' is empty"),
    ({"server": ""}, "'server' is empty"),
    ({"wait": "yes"}, "'wait' must be true or false"),
])
def test_action_refuses_input_it_cannot_send(tmp_path: Path, given: dict[str, str],
                                             complaint: str) -> None:
    run = run_action(tmp_path, **given)

    assert run.result.returncode == 2
    assert complaint in run.result.stdout
    assert not run.fanout.called
    assert run.outputs == {"exit-code": "2"}


@pytest.mark.parametrize(("spec", "expected"), [("", str(ROOT)), ("fanout @ git+https://x/y.git",
                                                                  "fanout @ git+https://x/y.git")])
def test_action_installs_its_own_checkout_by_default(tmp_path: Path, spec: str,
                                                     expected: str) -> None:
    bin_dir = tmp_path / "bin"
    python = install_fake(bin_dir, "python3")
    step = action_step("Install fanout")
    inputs = action_inputs(server=SERVER, token=TOKEN, source=SOURCE, fanout_spec=spec)
    env = base_env(bin_dir, tmp_path)
    env.update({k: render(str(v), inputs, str(ROOT)) for k, v in step["env"].items()})

    result = run_bash(step["run"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert python.argv() == ["-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                             expected]


# --- the GitLab template --------------------------------------------------------------------

GITLAB_PREDEFINED = {"CI_REGISTRY_IMAGE": "registry.gitlab.example/acme/app",
                     "CI_COMMIT_TAG": "v1.4.2"}
PIP_SPEC = "fanout @ git+https://gitlab.example/platform/fanout.git@v0.1.0"


def gitlab_job(job_variables: dict[str, str]) -> dict[str, Any]:
    """A job that `extends: .fanout-release`, merged as GitLab does (hashes deep-merged)."""
    template = load(GITLAB)[".fanout-release"]
    return {**template, "variables": {**template.get("variables", {}), **job_variables}}


def expand(value: str, known: dict[str, str]) -> str:
    """GitLab expands $NAME and ${NAME} in a variable's value, once."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: known.get(m.group(1), ""), value)


@dataclass
class JobRun:
    result: subprocess.CompletedProcess[str]
    dotenv: dict[str, str]
    pip: Fake
    fanout: Fake


def run_gitlab(tmp_path: Path, job_variables: dict[str, str], *, code: int = 0, stdout: str = "",
               token: str = TOKEN, dotenv: dict[str, str] | None = None) -> JobRun:
    bin_dir = tmp_path / "bin"
    fanout = install_fake(bin_dir, "fanout", code=code, stdout=stdout)
    pip = install_fake(bin_dir, "pip")
    install_fake(bin_dir, "git")  # present, as on a runner image that has it: no apt-get here
    job = gitlab_job(job_variables)
    # Dotenv reports and project CI/CD variables (the masked token) outrank the job's own.
    env = {**base_env(bin_dir, tmp_path), **GITLAB_PREDEFINED}
    env.update({k: expand(str(v), env) for k, v in job["variables"].items()})
    env.update(dotenv or {}, FANOUT_TOKEN=token)
    # The runner runs before_script and script as one shell script, stopping at the first error.
    result = run_bash("\n".join([*job["before_script"], *job["script"]]), env, tmp_path)
    dotenv_path = tmp_path / job["artifacts"]["reports"]["dotenv"]
    dotenv = (dict(line.split("=", 1) for line in dotenv_path.read_text().splitlines())
              if dotenv_path.exists() else {})
    return JobRun(result, dotenv, pip, fanout)


def test_gitlab_template_is_a_hidden_job_with_no_pasted_inputs() -> None:
    template = load(GITLAB)
    assert list(template) == [".fanout-release"]
    job = template[".fanout-release"]
    assert job["image"] == "python:3.11-slim"
    # A job variable would shadow the project's masked FANOUT_TOKEN or a pipeline-wide value.
    assert not {k for k in job.get("variables", {}) if k.startswith("FANOUT_")}
    assert job["artifacts"]["when"] == "always"
    for line in [*job["before_script"], *job["script"]]:
        assert "$[[" not in line  # spec:inputs interpolation would paste values into the script
    # The script reads the token once, to check it is there; fanout finds it in its environment.
    assert len(re.findall(r"\$\{?FANOUT_TOKEN", "\n".join(job["script"]))) == 1


@pytest.mark.parametrize("code", [0, 1, 3])
def test_gitlab_job_runs_fanout_and_passes_its_exit_code_on(tmp_path: Path, code: int) -> None:
    run = run_gitlab(tmp_path, {
        "FANOUT_PIP_SPEC": PIP_SPEC, "FANOUT_SERVER": SERVER, "FANOUT_TO": "release",
        "FANOUT_SOURCE": "$CI_REGISTRY_IMAGE@sha256:" + "ab" * 32,
        "FANOUT_TAGS": "$CI_COMMIT_TAG, latest", "FANOUT_TIMEOUT": "600",
    }, code=code, stdout=json.dumps(RELEASE, indent=2))

    assert run.result.returncode == code, run.result.stderr
    assert run.pip.argv() == ["install", "--quiet", PIP_SPEC]
    assert run.fanout.argv() == [
        "enqueue", f"--server={SERVER}", "--json", "--to=release", "--tag=v1.4.2",
        "--tag=latest", "--wait", "--timeout=600", "--",
        "registry.gitlab.example/acme/app@sha256:" + "ab" * 32,
    ]
    assert run.fanout.env()["FANOUT_TOKEN"] == TOKEN
    assert run.dotenv == {"FANOUT_RELEASE_ID": "r-01J9ZC3", "FANOUT_EXIT_CODE": str(code)}
    assert json.loads((tmp_path / "fanout-release.json").read_text())["id"] == "r-01J9ZC3"
    assert TOKEN not in run.result.stdout + run.result.stderr
    assert TOKEN not in " ".join(run.fanout.argv())


def test_gitlab_hostile_variables_arrive_as_literal_arguments(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    # As a dotenv report or the project's settings give them: after GitLab's own expansion.
    run = run_gitlab(tmp_path, {
        "FANOUT_PIP_SPEC": "fanout==0.1.0", "FANOUT_SERVER": SERVER, "FANOUT_WAIT": "false",
    }, stdout=json.dumps({"releases": [RELEASE]}), dotenv={
        "FANOUT_SOURCE": SOURCE, "FANOUT_TO": "-rel; id",
        "FANOUT_TAGS": ",".join([*HOSTILE, f"$(touch {canary})"]),
        "FANOUT_DESTINATIONS": f"quay.io/acme/app, `touch {canary}`",
    })

    assert run.result.returncode == 0, run.result.stderr
    assert run.fanout.argv() == [
        "enqueue", f"--server={SERVER}", "--json", "--to=-rel; id",
        *[f"--tag={t}" for t in HOSTILE], f"--tag=$(touch {canary})",
        "--", SOURCE, "quay.io/acme/app", f"`touch {canary}`",
    ]
    assert run.dotenv["FANOUT_RELEASE_ID"] == "r-01J9ZC3"
    assert not canary.exists()


@pytest.mark.parametrize(("variables", "token", "complaint"), [
    ({"FANOUT_SERVER": SERVER, "FANOUT_SOURCE": SOURCE}, TOKEN, "set FANOUT_PIP_SPEC"),
    ({"FANOUT_PIP_SPEC": "fanout", "FANOUT_SERVER": SERVER, "FANOUT_SOURCE": SOURCE}, "",
     "FANOUT_TOKEN is empty"),
    ({"FANOUT_PIP_SPEC": "fanout", "FANOUT_SOURCE": SOURCE}, TOKEN, "FANOUT_SERVER is empty"),
    ({"FANOUT_PIP_SPEC": "fanout", "FANOUT_SERVER": SERVER, "FANOUT_SOURCE": SOURCE,
      "FANOUT_WAIT": "1"}, TOKEN, "FANOUT_WAIT must be true or false"),
])
def test_gitlab_job_refuses_what_it_cannot_send(tmp_path: Path, variables: dict[str, str],
                                                token: str, complaint: str) -> None:
    run = run_gitlab(tmp_path, variables, token=token)

    assert run.result.returncode == 2
    assert complaint in run.result.stderr
    assert not run.fanout.called


# --- the action's script, the real fanout, a real fanout serve ------------------------------

@pytest.mark.integration
@pytest.mark.timeout(120)
def test_action_releases_through_a_real_fanout_serve(tmp_path: Path,
                                                     registries: RegistrySet) -> None:
    source, dest = registries.source, registries.dest1
    image = images.push_oci_image(source, "ci-glue/app", "v1", layers=1)
    config = (f'[destinations]\nrelease = ["{dest.host}/ci-glue/app"]\n'
              + token_toml("ci", TOKEN, ["release"], [f"{source.host}/ci-glue/*"]))
    redis_server = RedisServer(tmp_path / "redis", persistent=False).start()
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    try:
        worker = start_worker("ci-glue", env, tmp_path)
        try:
            with serving(tmp_path / "serve", config, env=env) as served:
                # The step's environment has no broker, no Docker config: a URL and a token.
                ok = run_action(tmp_path / "ok", real=True, server=served.url,
                                source=f"{source.host}/ci-glue/app:v1", to="release",
                                tags="1.0.0", timeout="60")
                refused = run_action(tmp_path / "refused", real=True, server=served.url,
                                     source=f"{source.host}/elsewhere/app:v1", to="release")
                server_log = served.log()
        finally:
            worker.stop()
        release = ledger_for(env["FANOUT_BROKER_URL"]).get(ok.outputs.get("release-id", ""))
    finally:
        redis_server.stop()

    assert ok.result.returncode == 0, ok.result.stdout + ok.result.stderr
    assert ok.outputs["exit-code"] == "0"
    assert release is not None and release.digest == image.digest and release.done
    assert images.manifest_exists(dest, "ci-glue/app:1.0.0")
    assert not ok.fanout.called
    assert f"| {dest.host}/ci-glue/app | succeeded | 1 |" in ok.summary
    assert refused.result.returncode == 2
    assert refused.outputs == {"exit-code": "2", "release-id": ""}
    assert "may not copy from" in refused.result.stderr
    for text in (server_log, ok.result.stdout + ok.result.stderr, ok.summary,
                 refused.result.stdout + refused.result.stderr):
        assert TOKEN not in text
