"""VLM backends around the model call: the OpenAI-compatible client against a real HTTP server on
loopback (retries, backoff, timeouts, bad replies), the vLLM request and answer handling, and the
provided-concepts reader."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.config import PromptConfig, VlmConfig
from schemas import IMAGES
from stages.vlm_openai import OpenAIVlm, RequestFailed, chat_payload, post_with_retries
from stages.vlm_provided import ProvidedConceptsError, read_provided
from stages.vlm_vllm import INFERENCE_ERROR, normalize_answers, vllm_answer, vllm_request

ANSWER = '{"caption": "a dog", "sounds": [{"label": "dog", "text": "a dog barking"}]}'


def jpeg(size=(640, 480)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


class Server:
    """A chat-completions endpoint whose replies the test scripts: a list of (status, body, delay)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                status, reply, delay = outer.script.pop(0) if outer.script else (200, None, 0)
                time.sleep(delay)
                payload = json.dumps(reply or {"choices": [{"message": {"content": ANSWER}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    made = []

    def make(script=()):
        made.append(Server(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def vlm(url, **kwargs):
    return VlmConfig(name="remote", backend="openai", model="served-model", base_url=url, **kwargs)


def images_batch(count: int, dropped_at: int | None = None) -> pa.Table:
    rows = []
    for i in range(count):
        rows.append(
            {f.name: None for f in IMAGES}
            | {"image_id": f"i{i}", "uri": f"/img/{i}.jpg", "image_bytes": jpeg(), "dropped": "too_small" if i == dropped_at else None}
        )
    return pa.Table.from_pylist(rows, schema=IMAGES)


def test_payload_carries_schema_and_capped_image():
    prompt = PromptConfig(max_pixels=100 * 100)
    from stages.images import vlm_jpeg

    payload = chat_payload(vlm("http://x/v1"), prompt, vlm_jpeg(jpeg(), prompt.max_pixels))
    assert payload["model"] == "served-model"
    schema = payload["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["sounds"]["maxItems"] == prompt.max_concepts
    image_part, text_part = payload["messages"][0]["content"]
    assert text_part == {"type": "text", "text": prompt.text}
    data = base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as sent:
        assert sent.width * sent.height <= 100 * 100


def test_stage_answers_concurrently_and_skips_dropped(server, monkeypatch):
    srv = server()
    monkeypatch.setenv("TEST_KEY", "secret")
    stage = OpenAIVlm(vlm(srv.url, concurrency=3, api_key_env="TEST_KEY"), PromptConfig())
    out = stage.process_batch(images_batch(5, dropped_at=2)).to_pylist()
    assert [r["answer"] for r in out] == [ANSWER, ANSWER, None, ANSWER, ANSWER]
    assert len(srv.requests) == 4
    path, headers, _ = srv.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret"


def test_retries_with_backoff_then_succeed(server):
    srv = server([(503, {"error": "busy"}, 0), (429, {"error": "slow down"}, 0)])
    waits = []
    reply = post_with_retries(srv.url + "/chat/completions", {}, None, 5.0, 3, sleep=waits.append)
    assert reply["choices"][0]["message"]["content"] == ANSWER
    assert waits == [0.5, 1.0]


def test_client_errors_are_not_retried(server):
    srv = server([(400, {"error": "bad request"}, 0)])
    with pytest.raises(RequestFailed, match="HTTP 400.*after 1 attempt"):
        post_with_retries(srv.url + "/chat/completions", {}, None, 5.0, 3, sleep=lambda s: None)
    assert len(srv.requests) == 1


def test_timeouts_are_retried_and_reported(server):
    srv = server([(200, None, 1.0), (200, None, 1.0)])
    with pytest.raises(RequestFailed, match="after 2 attempts"):
        post_with_retries(srv.url + "/chat/completions", {}, None, 0.2, 1, sleep=lambda s: None)


def test_unreachable_server_becomes_row_errors_not_a_crash():
    stage = OpenAIVlm(vlm("http://127.0.0.1:9/v1", retries=1, timeout_s=1.0), PromptConfig())
    out = stage.process_batch(images_batch(2)).to_pylist()
    assert all(r["answer"] is None and r["error_stage"] == "vlm" and "remote" in r["error"] for r in out)


def test_reply_without_content_is_an_error(server):
    srv = server([(200, {"choices": []}, 0)])
    out = OpenAIVlm(vlm(srv.url, retries=0), PromptConfig()).process_batch(images_batch(1)).to_pylist()
    assert "no choices[0].message.content" in out[0]["error"]


def test_vllm_request_and_answers():
    prompt = PromptConfig(max_new_tokens=99, max_pixels=64 * 64)
    row = images_batch(1).to_pylist()[0]
    request = vllm_request(row, prompt, temperature=0.0)
    assert request["image_id"] == "i0"
    assert request["sampling_params"]["max_tokens"] == 99
    assert request["sampling_params"]["structured_outputs"]["json"]["required"] == ["caption", "sounds"]
    assert request["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    answered = vllm_answer({**request, "generated_text": ANSWER})
    assert answered["answer"] == ANSWER and "messages" not in answered
    failed = {**{f.name: row[f.name] for f in IMAGES}, INFERENCE_ERROR: "CUDA out of memory", "answer": ""}
    table = pa.Table.from_pylist([{**answered, INFERENCE_ERROR: ""}, failed])
    out = normalize_answers(table, "qwen").to_pylist()
    assert out[0]["answer"] == ANSWER and out[0]["error"] is None
    assert out[1]["answer"] is None and "CUDA out of memory" in out[1]["error"] and out[1]["error_stage"] == "vlm"


def test_provided_concepts_files(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"image_id": "a", "concepts": [{"label": "dog", "text": "bark"}]}\n\n{"image_id": 7, "concepts": []}\n')
    answers = read_provided(str(jsonl))
    assert json.loads(answers["a"]) == {"caption": "", "sounds": [{"label": "dog", "text": "bark"}]}
    assert "7" in answers
    parquet = tmp_path / "c.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_id": ["b"], "caption": ["x"], "concepts": [[{"label": "l", "text": "t"}]]}), parquet)
    assert json.loads(read_provided(str(parquet))["b"])["caption"] == "x"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "a"}\n')
    with pytest.raises(ProvidedConceptsError, match="record 1: needs image_id and concepts"):
        read_provided(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ProvidedConceptsError, match="line 1: not JSON"):
        read_provided(str(bad))
