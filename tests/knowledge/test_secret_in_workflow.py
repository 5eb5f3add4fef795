"""A knowledge server's key reaches no file and no output of a workflow run: the server refuses
it and echoes the Authorization header back (the job fails), then fails with the header in a
5xx body before it answers (retried, the job succeeds). Every file under the run folder
(results/, its logs/, .snakemake/) and everything Snakemake and the jobs printed is searched
for the key."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.bad_input_cases import MODALITY, base_config
from tests.conftest import BIN, REPO
from tests.knowledge.chat_server import ChatServer, Reply
from tests.site_data import write_site
from tests.site_workspace import site_answer

KEY_ENV = "CRAFT_TEST_SECRET_KEY"
SECRET = "sk-workflow-5b0f2c71e9-must-not-be-written"


def test_the_key_is_in_no_file_and_no_output(tmp_path, env):
    write_site(tmp_path / "site", n_patients=12)
    cfg = base_config(tmp_path)
    phase = {"refuse": True}
    server: ChatServer

    def reply(n: int, body: dict) -> Reply:
        auth = server.seen[n].headers.get("Authorization", "")
        if phase["refuse"]:
            return Reply(status=401, body=json.dumps({"error": f"invalid key in '{auth}'"}))
        if n % 3 == 0:  # a 5xx that echoes the header: retried, then answered
            return Reply(status=503, body=f"overloaded; you sent Authorization: {auth}")
        return Reply(site_answer(body))

    runs = []
    with ChatServer(reply) as server:
        cfg["knowledge"] = {
            "backend": {
                "kind": "openai",
                "base_url": server.base_url,
                "model": "site/chat-model",
                "api_key_env": KEY_ENV,
                "max_retries": 2,
                "backoff_s": 0.0,
                "timeout_s": 20,
            }
        }
        config = tmp_path / "site.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        target = f"{cfg['results']}/knowledge/{MODALITY}.json"
        cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), target, "--cores", "1",
               "--configfile", str(config)]  # fmt: skip
        job_env = {**env, KEY_ENV: SECRET}
        for refuse in (True, False):
            phase["refuse"] = refuse
            runs.append(
                subprocess.run(
                    cmd, cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=600
                )
            )
    failed, done = runs
    assert failed.returncode != 0 and "HTTP 401" in failed.stdout + failed.stderr + "".join(
        p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log")
    ), failed.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "knowledge" / f"{MODALITY}.json").is_file()
    # the key was sent, and echoed back, so the redaction was exercised
    assert {s.headers.get("Authorization") for s in server.seen} == {f"Bearer {SECRET}"}
    logs = "".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert "HTTP 503" in logs and "***" in logs, logs[-2000:]

    output = "".join(r.stdout + r.stderr for r in runs)
    assert SECRET not in output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(".snakemake" in p.parts for p in files) and any("logs" in p.parts for p in files), (
        "the run left no Snakemake or job logs to search"
    )
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
    # a part of the key is no better: its first half appears nowhere either
    half = SECRET[: len(SECRET) // 2].encode()
    assert not [p for p in files if half in p.read_bytes()] and half.decode() not in output
