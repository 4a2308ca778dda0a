"""VLM answers from any OpenAI-compatible `/v1/chat/completions` server (`vllm serve`,
`transformers serve`, hosted APIs): concurrent requests, retries with exponential backoff on
connection errors, timeouts, 429 and 5xx, and a per-request timeout. The answer schema goes in
`response_format`, which servers with structured outputs enforce."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pyarrow as pa

from schemas import ANSWERS, IMAGES
from schemas.config import OpenAIVlmConfig, PromptConfig
from stages.base import Resources, Stage
from stages.errors import BadInput, error_text
from stages.images.decoding import vlm_jpeg
from stages.vlm.concepts import answer_schema, answers_table, openai_user_message

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_SECONDS = 0.5


class RequestFailed(BadInput):
    """A request that retries did not rescue, or an image that could not be sent."""

    kind = "vlm_failed"


def chat_payload(vlm: OpenAIVlmConfig, prompt: PromptConfig, jpeg: bytes) -> dict:
    return {
        "model": vlm.model,
        "messages": [openai_user_message(prompt.text, jpeg)],
        "max_tokens": prompt.max_new_tokens,
        "temperature": vlm.temperature,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "sounding_concepts",
                "schema": answer_schema(prompt.max_concepts, prompt.max_text_chars),
            },
        },
    }


def _error_body(error: urllib.error.HTTPError) -> str:
    """The start of an error reply's body, which can itself break off while it is read."""
    try:
        return error.read()[:200].decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"(body unreadable: {type(exc).__name__})"


def post_with_retries(
    url: str, payload: dict, api_key: str | None, timeout_s: float, retries: int, sleep=time.sleep
) -> dict:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {_error_body(exc)}"
            if exc.code not in RETRYABLE_STATUS:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException) as exc:
            # HTTPException covers a reply cut short while it is read (IncompleteRead).
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        except UnicodeDecodeError:
            last = "the server's reply is not UTF-8"
        except json.JSONDecodeError:
            last = "the server's reply is not JSON"
            break
    raise RequestFailed(f"{last} (after {attempt + 1} attempt{'s' if attempt else ''})")


class OpenAIVlm(Stage):
    name: ClassVar[str] = "vlm_openai"
    required_columns: ClassVar[tuple[str, ...]] = tuple(IMAGES.names)

    def __init__(self, vlm: OpenAIVlmConfig, prompt: PromptConfig) -> None:
        self.vlm = vlm
        self.prompt = prompt

    def resources(self) -> Resources:
        return Resources(num_cpus=0.5, batch_size=self.vlm.batch_size)

    def output_schema(self) -> pa.Schema:
        return ANSWERS

    def _ask(self, image_bytes: bytes) -> str:
        url = self.vlm.base_url.rstrip("/") + "/chat/completions"
        try:
            jpeg = vlm_jpeg(image_bytes, self.prompt.max_pixels)
        except Exception as exc:  # any failure of one image's re-encoding is that row's error
            reason = f"image could not be prepared for the VLM ({type(exc).__name__}: {exc})"
            raise RequestFailed(reason, kind="image_not_prepared") from None
        payload = chat_payload(self.vlm, self.prompt, jpeg)
        reply = post_with_retries(
            url, payload, os.environ.get(self.vlm.api_key_env), self.vlm.timeout_s, self.vlm.retries
        )
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise RequestFailed(f"reply has no text in choices[0].message.content: {json.dumps(reply)[:200]}")
        return content

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["error"] is None and r["dropped"] is None]
        answers: list[str | None] = [None] * len(rows)
        with ThreadPoolExecutor(max_workers=self.vlm.concurrency) as pool:
            futures = {i: pool.submit(self._ask, rows[i]["image_bytes"]) for i in todo}
            for i, future in futures.items():
                try:
                    answers[i] = future.result()
                except RequestFailed as exc:
                    rows[i]["error"] = error_text(rows[i]["uri"], str(exc), rows[i]["member"], self.vlm.name)
                    rows[i]["error_kind"], rows[i]["error_stage"] = exc.kind, "vlm"
        return answers_table(rows, answers)
