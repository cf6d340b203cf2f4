"""Security: a planted API key ends up in no file, log, result, provenance record or error message; judge
requests go to the configured base_url and nowhere else; untrusted text (captions, and hostile strings in
config values) never runs in a shell; the repository holds no key-like strings."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer, make_responses  # noqa: E402
from reliability_helpers import EXP, REPO, case, run, snakemake_cmd, write_override  # noqa: E402

KEY = "sk-planted-reliability-" + "9c41e0b7d2a35f86"
TARGET = f"results/judge/{EXP}/grpo/test.taxonomy.jsonl"
HOSTILE = [
    "$(touch pwned)",
    "`touch pwned2`",
    "; touch pwned3 #",
    "' ; rm -rf ~ ; '",
    '" && touch pwned4 "',
    "\n",
]


class RecordingProxy:
    """A TCP listener on 127.0.0.1 standing in for HTTP(S)_PROXY: every connection is recorded and refused."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    return [
        str(f)
        for f in root.rglob("*")
        if f.is_file() and not f.is_symlink() and any(n in f.read_bytes() for n in needles)
    ]


def judge_workdir(tmp_path: Path, name: str, srv, **judge) -> tuple[Path, Path]:
    wd = tmp_path / name / "wd"
    resp = wd / f"results/eval/{EXP}/grpo/generated_responses_test.json"
    resp.parent.mkdir(parents=True)
    resp.write_text(json.dumps(make_responses(8, seed=3)))
    cfg = {
        "backend": "openai",
        "base_url": srv.base_url,
        "concurrency": 2,
        "max_retries": 2,
        "backoff_s": 0.01,
    }
    override = write_override(tmp_path / name / "override.yaml", {"judge": cfg | judge})
    return wd, override


def test_planted_key_leaks_nowhere_and_requests_go_only_to_base_url(tmp_path, record_property):
    needles = [KEY.encode(), KEY[-16:].encode()]
    with RecordingProxy() as proxy, FakeOpenAIServer() as srv:
        # the first two requests get a 500 whose body echoes the Authorization header (must be redacted)
        srv.script = ["echo_auth", "echo_auth"]
        wd, override = judge_workdir(tmp_path, "ok", srv)
        proxies = {
            k: proxy.url for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
        }
        env = {"OPENAI_API_KEY": KEY, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **proxies}
        ok = run(snakemake_cmd(wd, [TARGET], override, "--cores", "1"), **env)
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
        assert srv.by_mode["echo_auth"] == 2 and srv.total == 8 + 2
        assert set(srv.auth_headers) == {f"Bearer {KEY}"}  # the key was sent, so it was there to leak
        # a run that fails: every request answered with the echoed key, the job must fail without it
        srv.script = ["echo_auth"] * 100
        wd_fail, override_fail = judge_workdir(tmp_path, "fail", srv, max_retries=1)
        fail = run(snakemake_cmd(wd_fail, [TARGET], override_fail, "--cores", "1"), **env)
        assert fail.returncode != 0
        judge_conns = proxy.connections
        # control: with the same environment, a request to any other host reaches the recording proxy
        stray = "import httpx\ntry:\n    httpx.get('http://judge-elsewhere.invalid/', timeout=3)\nexcept Exception:\n    pass\n"
        run([sys.executable, "-c", stray], **env)
        control_conns = proxy.connections - judge_conns
    assert judge_conns == 0, "a request went somewhere other than judge.base_url"
    assert control_conns == 1, "the recording proxy would not have seen a stray request"
    leaked = files_containing(tmp_path, needles)
    outputs = ok.stdout + ok.stderr + fail.stdout + fail.stderr
    assert leaked == [] and not any(n.decode() in outputs for n in needles), leaked
    log = (wd_fail / f"results/logs/judge/{EXP}/grpo/test.taxonomy.log").read_text()
    assert "500" in log or "fail" in log.lower()  # the failure is reported, just not the key
    n_files = sum(1 for f in tmp_path.rglob("*") if f.is_file())
    case(
        record_property,
        "OPENAI_API_KEY planted; judge via Snakemake against a fake server echoing the key in 500s; "
        "HTTP(S)_PROXY set to a recording listener",
        "key in no file, log, result, provenance or error; requests only to base_url",
        f"0 of {n_files} files and no output contain it; {srv.total} requests to base_url, 0 elsewhere",
    )


KEYLIKE = re.compile(
    "|".join(
        [
            r"sk-[A-Za-z0-9_\-]{20,}",
            r"AKIA[0-9A-Z]{16}",
            r"hf_[A-Za-z0-9]{30,}",
            r"gh[pousr]_[A-Za-z0-9]{36}",
            r"xox[abprs]-[A-Za-z0-9\-]{10,}",
            "-----BEGIN [A-Z ]*" + "PRIVATE KEY-----",
        ]
    )
)
#: Strings that look like keys but are test fixtures say so in their text.
MARKED_FAKE = re.compile(r"test|fake|dummy|example|planted|leak|reliab", re.I)


def test_repository_holds_no_key_like_strings(record_property):
    proc = subprocess.run(
        ["git", "grep", "-nIE", KEYLIKE.pattern], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    if proc.returncode not in (0, 1) or not (REPO / ".git").exists():
        pytest.fail(f"git grep failed: {proc.stderr}")
    hits = [
        line
        for line in proc.stdout.splitlines()
        if not all(MARKED_FAKE.search(m) for m in KEYLIKE.findall(line))
    ]
    assert hits == []
    n_fake = len(proc.stdout.splitlines())
    case(
        record_property,
        "git grep of every committed file for key-like strings (sk-, AKIA, hf_, ghp_, xox, private keys)",
        "none, except test fixtures marked as fake",
        f"0 real; {n_fake} marked test keys",
    )


def vsr_rows(n: int) -> list[dict]:
    return [
        {
            "image": f"{i:012d}.png",
            "caption": f"The cat {HOSTILE[i % len(HOSTILE)]} is left of the dog {i}.",
            "label": i % 2,
            "relation": "left of",
            "subj": "cat",
            "obj": "dog",
        }
        for i in range(n)
    ]


def test_untrusted_text_never_reaches_a_shell(tmp_path, record_property):
    from PIL import Image

    # the dataset folder's own name is hostile too: config values reach command lines only quoted
    src = tmp_path / "vsr $(touch pwned5) ; touch pwned6"
    (src / "images").mkdir(parents=True)
    rows = vsr_rows(12)
    for r in rows:
        Image.new("RGB", (16, 16), (200, 10, 10)).save(src / "images" / r["image"])
    for split in ("train", "dev", "test"):
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evil = {
        "kind": "relation",
        "source": "local",
        "loader": "vsr",
        "splits": {"train": None, "val": None, "test": None},
        "real": {"local_dir": str(src), "splits": {"train": "train", "val": "dev", "test": "test"}},
    }
    override = write_override(
        tmp_path / "override.yaml",
        {
            "datasets": {"evil": evil},
            "experiments": {"evil_exp": {"model": "qwen", "dataset": "evil"}},
            "tables": {"vsr_main": {"experiments": ["evil_exp"]}},
            "judge": {"runs": ["evil_exp"]},
            "system_prompt": "Answer. $(touch pwned7) `touch pwned8`",
        },
    )
    wd = tmp_path / "wd"
    plan = run(snakemake_cmd(wd, ["all"], override, "-n", "-p", "--cores", "1"))
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    # every caption fragment is absent from every planned shell command
    fragments = [h.strip() for h in HOSTILE if h.strip()] + ["The cat"]
    assert not [f for f in fragments if f in plan.stdout], "caption text on a planned command line"
    # a local dataset is formatted by the submit-host rule fetch_dataset (make_dataset: synthetic ones)
    assert "rule fetch_dataset:" in plan.stdout and "rule evaluate:" in plan.stdout
    # run the data stage for real: the hostile folder name and captions are handled as data
    done = run(snakemake_cmd(wd, ["results/data/evil"], override, "-p", "--cores", "1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pwned = [p for root in (tmp_path, REPO, Path.cwd()) for p in root.rglob("pwned*")]
    assert pwned == []
    import datasets

    saved = datasets.load_from_disk(str(wd / "results/data/evil/train"))
    assert sorted(saved["caption"]) == sorted(r["caption"] for r in rows)  # kept verbatim, as data
    case(
        record_property,
        "captions with $(touch pwned), backticks, ; rm -rf, quotes; dataset folder and system_prompt with "
        "$(...) and `...`",
        "no caption on any planned command line; no injected command runs",
        f"0 of {len(fragments)} fragments in `snakemake -n -p all`; fetch_dataset ran; no pwned file; "
        "captions saved verbatim",
    )
