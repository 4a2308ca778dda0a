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

from schemas import IMAGES
from schemas.config import OpenAIVlmConfig, PromptConfig, VllmVlmConfig
from schemas.layout import SonifyLayout
from stages.vlm.openai_stage import OpenAIVlm, RequestFailed, chat_payload, post_with_retries
from stages.vlm.provided_stage import ProvidedConceptsError, read_provided
from stages.vlm.vllm_stage import INFERENCE_ERROR, NO_ANSWER_NEEDED, normalize_answers, vllm_answer, vllm_request

ANSWER = '{"caption": "a dog", "sounds": [{"label": "dog", "text": "a dog barking"}]}'


def jpeg(size=(640, 480)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


class Raw:
    """A reply body sent as these bytes, announced as `declared` bytes long (more: the reply is cut short)."""

    def __init__(self, body: bytes, declared: int | None = None) -> None:
        self.body = body
        self.declared = len(body) if declared is None else declared


class Server:
    """A chat-completions endpoint whose replies the test scripts: a list of (status, body, delay),
    the body a JSON value or Raw bytes."""

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
                if not isinstance(reply, Raw):
                    reply = Raw(json.dumps(reply or {"choices": [{"message": {"content": ANSWER}}]}).encode())
                payload = reply.body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(reply.declared))
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
    return OpenAIVlmConfig(name="remote", backend="openai", model="served-model", base_url=url, **kwargs)


def images_batch(count: int, dropped_at: int | None = None) -> pa.Table:
    rows = []
    for i in range(count):
        rows.append(
            {f.name: None for f in IMAGES}
            | {
                "image_id": f"i{i}",
                "uri": f"/img/{i}.jpg",
                "image_bytes": jpeg(),
                "dropped": "too_small" if i == dropped_at else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=IMAGES)


def test_payload_carries_schema_and_capped_image():
    prompt = PromptConfig(max_pixels=100 * 100)
    from stages.images.decoding import vlm_jpeg

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
    assert "no text in choices[0].message.content" in out[0]["error"]
    for content in ([{"type": "text", "text": "x"}], {"text": "x"}, None, 7):
        srv = server([(200, {"choices": [{"message": {"content": content}}]}, 0)])
        (row,) = OpenAIVlm(vlm(srv.url, retries=0), PromptConfig()).process_batch(images_batch(1)).to_pylist()
        assert row["answer"] is None and "no text in choices[0].message.content" in row["error"], content


def test_an_error_reply_cut_short_is_retried(server):
    srv = server([(503, Raw(b"overloa", declared=300), 0), (200, None, 0)])
    assert post_with_retries(srv.url + "/chat/completions", {}, None, 5.0, 1, sleep=lambda s: None)["choices"]


@pytest.mark.parametrize(
    "broken, reason",
    [
        (Raw(b'{"choices": [{"message"', declared=400), "IncompleteRead"),
        (Raw(b'{"choices": [{"message": {"content": "\xff\xfe caf\xe9"}}]}'), "not UTF-8"),
    ],
)
def test_replies_broken_while_read_are_retried_then_a_row_error(server, broken, reason):
    srv = server([(200, broken, 0), (200, None, 0)])
    assert post_with_retries(srv.url + "/chat/completions", {}, None, 5.0, 1, sleep=lambda s: None)["choices"]
    srv = server([(200, broken, 0)] * 2)
    stage = OpenAIVlm(vlm(srv.url, retries=1), PromptConfig())
    (row,) = stage.process_batch(images_batch(1)).to_pylist()
    assert row["answer"] is None and row["error_stage"] == "vlm"
    assert reason in row["error"] and "after 2 attempts" in row["error"]


def test_tls_errors_are_retried(monkeypatch):
    import ssl
    import urllib.request

    calls = []

    def failing_urlopen(request, timeout):
        calls.append(request.full_url)
        raise ssl.SSLError(1, "record layer failure")

    monkeypatch.setattr(urllib.request, "urlopen", failing_urlopen)
    with pytest.raises(RequestFailed, match="SSLError.*after 3 attempts"):
        post_with_retries("https://127.0.0.1:9/v1/chat/completions", {}, None, 1.0, 2, sleep=lambda s: None)
    assert len(calls) == 3


def test_an_image_the_vlm_cannot_receive_is_a_row_error(server):
    srv = server()
    batch = images_batch(2)
    rows = batch.to_pylist()
    rows[0]["image_bytes"] = b"not an image at all"
    stage = OpenAIVlm(vlm(srv.url, retries=0), PromptConfig())
    out = stage.process_batch(pa.Table.from_pylist(rows, schema=batch.schema)).to_pylist()
    assert out[0]["answer"] is None and out[0]["error_stage"] == "vlm" and "could not be prepared" in out[0]["error"]
    assert out[1]["answer"] == ANSWER and out[1]["error"] is None


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
    jsonl.write_text(
        '{"image_id": "a", "concepts": [{"label": "dog", "text": "bark"}]}\n\n{"image_id": 7, "concepts": []}\n'
    )
    answers = read_provided(str(jsonl))
    assert json.loads(answers["a"]) == {"caption": "", "sounds": [{"label": "dog", "text": "bark"}]}
    assert "7" in answers
    parquet = tmp_path / "c.parquet"
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"image_id": ["b"], "caption": ["x"], "concepts": [[{"label": "l", "text": "t"}]]}), parquet
    )
    assert json.loads(read_provided(str(parquet))["b"])["caption"] == "x"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "a"}\n')
    with pytest.raises(ProvidedConceptsError, match="record 1: needs image_id and concepts"):
        read_provided(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ProvidedConceptsError, match="line 1: not JSON"):
        read_provided(str(bad))


def test_vllm_preprocess_marks_rows_that_need_no_answer():
    prompt = PromptConfig(max_pixels=64 * 64)
    dropped, broken = images_batch(2, dropped_at=0).to_pylist()
    broken["image_bytes"] = b"no image here"
    assert vllm_request(dropped, prompt, 0.0)[INFERENCE_ERROR] == NO_ANSWER_NEEDED
    passed = vllm_request(broken, prompt, 0.0)
    assert passed[INFERENCE_ERROR] == NO_ANSWER_NEEDED and "messages" not in passed
    assert passed["error_stage"] == "vlm" and "could not be prepared for the VLM" in passed["error"]
    out = normalize_answers(
        pa.Table.from_pylist([dropped | {INFERENCE_ERROR: NO_ANSWER_NEEDED}, passed]), "qwen"
    ).to_pylist()
    assert out[0]["dropped"] == "too_small" and out[0]["error"] is None and out[0]["answer"] is None
    assert out[1]["error"] == passed["error"] and out[1]["answer"] is None


def standin_engine_processor(stage, seen_file: str):
    """Ray Data LLM's own Processor, with our preprocess and postprocess, around a stand-in for the
    vLLM engine stage: it answers every row it is given, records which, and fails rows whose
    image id says so, as an engine reports a failed row."""
    from ray.llm._internal.batch.processor.base import Processor, ProcessorConfig
    from ray.llm._internal.batch.stages.base import StatefulStage, StatefulStageUDF

    class StandInEngine(StatefulStageUDF):
        async def udf(self, rows):
            with open(seen_file, "a") as seen:
                seen.writelines(f"{row['image_id']}\n" for row in rows)
            for row in rows:
                failed = "engine-fail" in row["image_id"]
                yield {
                    self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN],
                    "generated_text": None if failed else ANSWER,
                    INFERENCE_ERROR: "CUDA out of memory" if failed else "",
                }

    class StandInEngineStage(StatefulStage):
        def get_required_input_keys(self):
            return {"messages": "chat messages", "sampling_params": "sampling parameters"}

    from ray.data import ActorPoolStrategy

    engine = StandInEngineStage(fn=StandInEngine, map_batches_kwargs={"compute": ActorPoolStrategy(size=1)})
    return Processor(
        ProcessorConfig(batch_size=stage.vlm.batch_size), [engine], preprocess=stage.request, postprocess=stage.answer
    )


def test_vllm_wiring_decodes_each_image_once_and_engine_sees_only_answerable_rows(ray_session, tmp_path, monkeypatch):
    from pipelines import ray_runner
    from pipelines.config import validate_config
    from pipelines.sonify import listing as listing_phase
    from pipelines.sonify import scenes as scenes_phase
    from stages.images.decode_stage import DecodeImages

    images = tmp_path / "images"
    images.mkdir()
    for i in range(9):
        Image.fromarray(np.full((40, 40, 3), i * 20, np.uint8)).save(images / f"img-{i}.png")
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(images / "engine-fail.png")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(images / "tiny.png")
    (images / "broken.png").write_bytes(b"\x89PNG truncated")
    decoded, engine = tmp_path / "decoded.txt", tmp_path / "engine.txt"

    class RecordingDecode(DecodeImages):
        def process_batch(self, batch):
            with open(decoded, "a") as seen:
                seen.writelines(f"{i}\n" for i in batch.column("image_id").to_pylist())
            return super().process_batch(batch)

    monkeypatch.setattr(scenes_phase, "DecodeImages", RecordingDecode)
    monkeypatch.setattr(
        ray_runner, "build_llm_processor", lambda stage, retries, restarts: standin_engine_processor(stage, str(engine))
    )
    out = tmp_path / "out"
    config = validate_config(
        {
            "pool": {"dir": str(tmp_path / "pool")},
            "models": {
                "clap": {"model": "unused"},
                "vlm": [{"name": "engine", "backend": "vllm", "model": "unused", "batch_size": 4}],
            },
            "sonify": {"images": [str(images / "*.png")], "out": str(out), "min_side": 16, "images_per_chunk": 8},
        }
    )
    layout = SonifyLayout(str(out))
    listing, _ = listing_phase.image_listing(config, layout)
    chunks = listing_phase.chunk_listing(listing.num_rows, config.sonify.images_per_chunk)
    scenes_phase.run_scenes(config, listing, chunks, config.models.vlm[0], layout)

    ids = sorted(listing.column("image_id").to_pylist())
    assert sorted(decoded.read_text().split()) == ids
    assert sorted(engine.read_text().split()) == sorted([f"img-{i}" for i in range(9)] + ["engine-fail"])
    scenes = pa.concat_tables([scenes_phase.read_chunk_scenes(config, layout, c) for c in chunks]).to_pylist()
    by_id = {s["image_id"]: s for s in scenes}
    assert sorted(by_id) == ids
    assert all(by_id[f"img-{i}"]["concepts"][0]["text"] == "a dog barking" for i in range(9))
    assert by_id["tiny"]["dropped"] == "too_small" and by_id["tiny"]["error"] is None
    assert by_id["broken"]["error_stage"] == "images"
    assert by_id["engine-fail"]["error_stage"] == "vlm" and "CUDA out of memory" in by_id["engine-fail"]["error"]


def test_vllm_processor_stages_get_the_run_retry_settings(tiny_models, ray_session):
    """Ray Data LLM builds its processor without an engine; every stage must carry our retries."""
    from pipelines.ray_runner import build_llm_processor
    from stages.vlm.vllm_stage import VllmVlm

    vlm_config = VllmVlmConfig(name="q", backend="vllm", model=tiny_models["vlm_qwen2_5_vl"])
    processor = build_llm_processor(VllmVlm(vlm_config, PromptConfig()), task_retries=2, actor_restarts=7)
    names = processor.list_stage_names()
    assert "vLLMEngineStage" in names
    for name in names:
        kwargs = processor.get_stage_by_name(name).map_batches_kwargs
        assert (kwargs["max_restarts"], kwargs["max_task_retries"]) == (7, 2), name
    assert processor.preprocess_map_kwargs == {"max_retries": 2} == processor.postprocess_map_kwargs
