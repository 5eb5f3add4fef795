"""The openai backend for real over a socket: a local chat-completions server answers well,
badly, slowly, with errors and rate limits; the key must never leak."""

from __future__ import annotations

import json
import socket

import pytest

from craft.errors import CraftError
from craft.knowledge.build import build_knowledge
from craft.knowledge.schema import load_knowledge
from tests.knowledge.chat_server import ChatServer, Reply, valid_answer
from tests.knowledge.conftest import LABELS, SECRET, openai_settings

N_TASKS = len(LABELS) + 1  # one request per label + the modality request


def _build(tmp_path, server_or_url, **backend):
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    return build_knowledge(
        openai_settings(url, **backend),
        "phantom-cxr",
        "chest radiograph",
        LABELS,
        tmp_path / "results" / "knowledge" / "phantom-cxr.json",
        phantom="phantom-cxr",
    )


def test_valid_answers_become_knowledge(tmp_path, api_key):
    with ChatServer(lambda n, body: Reply(valid_answer(body))) as srv:
        k = _build(tmp_path, srv)
    assert len(srv.seen) == N_TASKS and not any(s.is_reask for s in srv.seen)
    assert {s.headers["Authorization"] for s in srv.seen} == {f"Bearer {SECRET}"}
    body = srv.seen[0].body
    assert body["model"] == "test/chat-model" and body["temperature"] == 0
    assert body["messages"][0]["role"] == "system"

    out = tmp_path / "results" / "knowledge" / "phantom-cxr.json"
    assert load_knowledge(out) == k
    assert (out.parent / "phantom-cxr.review.yaml").is_file()
    for lab in LABELS:
        p = k.labels[lab].prompts
        assert p[0].text == f"chest radiograph, {lab}" and p[0].source == "label"
        assert [x.source for x in p[1:]] == ["test/chat-model"] * 2
        assert all(len(x.request_digest) == 64 for x in p[1:])
    ids = [it.id for it in k.checklist]
    # label items + the shared 'several nodules' item once + 2 modality items; pain dropped
    assert len(ids) == len(LABELS) + 1 + 2, ids
    assert not any("pain" in it.statement for it in k.checklist)
    several = next(it for it in k.checklist if it.finding == "multiple_nodules")
    assert several.expected == {lab: False for lab in LABELS}
    assert several.oracle_criterion == "multiple_nodules"  # agrees with the oracle: linked
    cardio = next(it for it in k.checklist if it.finding == "cardiomegaly")
    assert cardio.oracle_criterion == "cardiomegaly" and cardio.weight == 2
    scoped = [it for it in k.checklist if it.scope == "modality"]
    assert len(scoped) == 2 and all(it.expected == dict.fromkeys(LABELS, True) for it in scoped)
    assert k.provenance["items_dropped"] == str(len(LABELS))
    assert k.provenance["items_merged"] == str(len(LABELS) - 1)


def test_repairable_answer_is_not_reasked(tmp_path, api_key):
    def reply(n, body):
        text = valid_answer(body).replace("}]}", "},]}")  # trailing comma in a code fence
        return Reply("Sure, here you go.\n" + text + "\nHope this helps.")

    with ChatServer(reply) as srv:
        _build(tmp_path, srv)
    assert len(srv.seen) == N_TASKS


def test_malformed_then_valid_is_reasked(tmp_path, api_key):
    def reply(n, body):
        if len(body["messages"]) == 2:
            return Reply('{"prompts": ["a chest radiograph" "missing comma"], "items": []}')
        return Reply(valid_answer(body))

    with ChatServer(reply) as srv:
        k = _build(tmp_path, srv)
    assert len(srv.seen) == 2 * N_TASKS
    reask = [s for s in srv.seen if s.is_reask]
    assert len(reask) == N_TASKS
    msgs = reask[0].body["messages"]
    assert msgs[2]["role"] == "assistant" and "missing comma" in msgs[2]["content"]
    assert "could not be used: the JSON is malformed" in msgs[3]["content"]
    assert len(k.labels) == len(LABELS)


def test_truncated_json_is_reasked(tmp_path, api_key):
    def reply(n, body):
        text = valid_answer(body)
        if len(body["messages"]) == 2:
            return Reply(text[: len(text) // 2], finish_reason="length")
        return Reply(text)

    with ChatServer(reply) as srv:
        _build(tmp_path, srv)
    reask = [s for s in srv.seen if s.is_reask]
    assert len(reask) == N_TASKS
    assert "cut off" in reask[0].body["messages"][3]["content"]


def test_slow_answer_times_out_and_is_retried(tmp_path, api_key):
    with ChatServer(lambda n, body: Reply(valid_answer(body), delay=1.5 if n == 0 else 0)) as srv:
        _build(tmp_path, srv, timeout_s=0.4)
    assert len(srv.seen) == N_TASKS + 1
    assert srv.seen[0].body == srv.seen[1].body  # the same request again


def test_server_error_is_retried(tmp_path, api_key):
    def reply(n, body):
        if n < 2:
            return Reply(status=500, body='{"error": "overloaded"}')
        return Reply(valid_answer(body))

    with ChatServer(reply) as srv:
        k = _build(tmp_path, srv)
    assert len(srv.seen) == N_TASKS + 2 and len(k.labels) == len(LABELS)


def test_rate_limit_waits_for_retry_after(tmp_path, api_key):
    def reply(n, body):
        if n == 0:
            return Reply(status=429, body='{"error": "slow down"}', headers={"Retry-After": "1"})
        return Reply(valid_answer(body))

    with ChatServer(reply) as srv:
        _build(tmp_path, srv)
    assert len(srv.seen) == N_TASKS + 1
    assert srv.seen[1].t - srv.seen[0].t >= 0.9  # waited as told, not the 0.01 s backoff


def test_always_invalid_fails_with_raw_answers_saved(tmp_path, api_key):
    with ChatServer(lambda n, body: Reply(f"I cannot answer that ({n}).")) as srv:
        with pytest.raises(CraftError) as exc:
            _build(tmp_path, srv)
    msg = str(exc.value)
    assert "\n" not in msg and "gave no usable answer to 'label-normal' in 3 tries" in msg
    assert "no JSON object" in msg
    path = tmp_path / "results" / "knowledge" / "phantom-cxr.failed" / "label-normal.txt"
    assert str(path) in msg
    text = path.read_text()
    assert text.count("===== answer") == 3 and "I cannot answer that (0)." in text
    assert len(srv.seen) == 3 * N_TASKS  # every task got its 3 tries before the run stopped
    assert not (tmp_path / "results" / "knowledge" / "phantom-cxr.json").exists()


def test_unreachable_endpoint_is_one_line(tmp_path, api_key):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CraftError) as exc:
        _build(tmp_path, f"http://127.0.0.1:{port}/v1", max_retries=1)
    msg = str(exc.value)
    assert "\n" not in msg and "failed 2 times" in msg and "cannot connect" in msg
    assert f"127.0.0.1:{port}/v1/chat/completions" in msg


def test_client_error_is_not_retried_and_hides_the_key(tmp_path, api_key):
    # A server that echoes the Authorization header back in its error body.
    def reply(n, body):
        return Reply(status=401, body=json.dumps({"error": f"bad key Bearer {SECRET}"}))

    with ChatServer(reply) as srv:
        with pytest.raises(CraftError) as exc:
            _build(tmp_path, srv)
    assert len(srv.seen) == 1
    assert "HTTP 401" in str(exc.value) and SECRET not in str(exc.value)


def test_missing_key_env_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("CRAFT_TEST_KNOWLEDGE_KEY", raising=False)
    with pytest.raises(CraftError, match="CRAFT_TEST_KNOWLEDGE_KEY"):
        _build(tmp_path, "http://127.0.0.1:9/v1")


def test_key_never_leaks(tmp_path, api_key, capfd):
    """Retries, rate limits, re-asks and a failure: the key is in no file, log or error."""

    def reply(n, body):
        if n == 0:
            return Reply(status=500, body="oops")
        if n == 1:
            return Reply(status=429, body="wait", headers={"Retry-After": "0"})
        if "nodule" in body["messages"][1]["content"].split("Target label: ")[-1][:10]:
            return Reply("not json")  # the nodule request always fails
        return Reply(valid_answer(body))

    with ChatServer(reply) as srv:
        with pytest.raises(CraftError) as exc:
            _build(tmp_path, srv)
        assert SECRET not in str(exc.value)
        srv.reply = lambda n, body: Reply(valid_answer(body))
        _build(tmp_path, srv)  # resumes and finishes
    assert all(s.headers["Authorization"] == f"Bearer {SECRET}" for s in srv.seen)
    out, err = capfd.readouterr()
    assert "retry" in err and SECRET not in out + err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("cache" in p.parts for p in files) and any(p.suffix == ".txt" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p


def test_cache_means_no_second_request_and_resume(tmp_path, api_key):
    fail_effusion = {"on": True}

    def reply(n, body):
        if fail_effusion["on"] and "Target label: effusion." in body["messages"][1]["content"]:
            return Reply(status=503, body="down")
        return Reply(valid_answer(body))

    with ChatServer(reply) as srv:
        with pytest.raises(CraftError, match="failed 1 times"):
            _build(tmp_path, srv, max_retries=0)  # dies at 'effusion' (third request)
        assert [s.target for s in srv.seen] == ["normal", "cardiomegaly", "effusion"]
        fail_effusion["on"] = False
        first = _build(tmp_path, srv)  # resumes: only what is not cached
        assert [s.target for s in srv.seen[3:]] == ["effusion", "nodule", "modality"]
        n = len(srv.seen)
        (tmp_path / "results" / "knowledge" / "phantom-cxr.json").unlink()
        again = _build(tmp_path, srv)
        assert len(srv.seen) == n  # everything from the cache
    assert again == first
    cached = list((tmp_path / "results" / "knowledge" / "cache").rglob("*.json"))
    assert len(cached) == N_TASKS
    entry = json.loads(cached[0].read_text())
    assert entry["request"]["identity"]["model"] == "test/chat-model"
    assert "127.0.0.1" not in cached[0].read_text()  # no URL in the cache either
