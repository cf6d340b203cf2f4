"""The package runs from a non-editable install: build the wheel, install it into a fresh venv (torch and the
other dependencies come from the system's site-packages), and use it from outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from pathlib import Path

    import yaml

    import grpo_vqa
    from grpo_vqa import config, launch
    from grpo_vqa.judge import prompts

    root = Path(grpo_vqa.__file__).resolve().parent
    checkout = Path(sys.argv[1])
    modules = [m.name for m in pkgutil.walk_packages(grpo_vqa.__path__, "grpo_vqa.")]
    for name in modules:
        importlib.import_module(name)
    files = {
        "schema": config.SCHEMA_PATH,
        "accelerate": launch.accelerate_config_file(None),
        "prompts": prompts.DEFAULT_PROMPT_DIR,
    }
    config.validate_config(yaml.safe_load((checkout / "config" / "config.yaml").read_text()))
    prompt = prompts.load_prompt("taxonomy")
    print(json.dumps({
        "package": str(root),
        "modules": len(modules),
        "files": {k: str(Path(v).resolve()) for k, v in files.items()},
        "exist": all(Path(v).exists() for v in files.values()),
        "prompt": prompt.version,
    }))
    """
)


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    # no build isolation: setuptools comes from this Python, so the build needs no package index
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(dist),
        ],
        tmp_path,
    )
    (wheel,) = dist.glob("grpo_vqa-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], tmp_path, env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "check.py").write_text(CHECK)
    got = json.loads(run([str(py), "check.py", str(REPO)], outside, env).strip().splitlines()[-1])
    site = str(venv.resolve())
    assert got["package"].startswith(site), got  # the installed copy, not the checkout's src/
    assert all(f.startswith(site) for f in got["files"].values()) and got["exist"], got
    assert got["modules"] > 50 and got["prompt"] == "taxonomy.v1", got
    # a command: the launcher runs a script on one process with the installed package
    (outside / "hello.py").write_text(
        "import grpo_vqa, sys; print('hello from', grpo_vqa.__file__, sys.argv[1:])\n"
    )
    launch_json = json.dumps({"num_processes": 1, "num_machines": 1, "deepspeed_stage": None})
    out = run(
        [str(py), "-m", "grpo_vqa.launch", "--launch-json", launch_json, "--", "hello.py", "x"], outside, env
    )
    assert "hello from " + site in out and "['x']" in out, out
