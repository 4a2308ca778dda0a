"""Sounding concepts: the VLM prompt, defensive parsing of its answer, and the non-sonic filter.

The answer format asked of every VLM backend:
    {"caption": "<one line>", "sounds": [{"label": "dog", "text": "a dog barking while running"}]}
Anything else becomes an error on the row, of kind empty_answer, answer_too_long, or bad_answer
(not JSON, truncated, nested too deeply, wrong shape). Within a good answer, a sound whose text
is empty, blank or not a string is dropped and counted (`dropped_empty_concepts`); a scene left
with no sound is dropped as no_concepts. Lone UTF-16 surrogates (a model cutting an emoji's
escape in half) become U+FFFD, since Arrow stores only valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

import pyarrow as pa

from schemas import ANSWERS, IMAGES, make_table

ANSWER_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "sounds": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "text": {"type": "string"}},
                "required": ["label", "text"],
            },
        },
    },
    "required": ["caption", "sounds"],
}


def answer_schema(max_concepts: int, max_text_chars: int = 200) -> dict:
    """The JSON schema given to structured-output decoders, with bounds that keep answers short."""
    schema = json.loads(json.dumps(ANSWER_JSON_SCHEMA))
    schema["additionalProperties"] = False
    schema["properties"]["caption"]["maxLength"] = max_text_chars
    sounds = schema["properties"]["sounds"]
    sounds["maxItems"] = max_concepts
    sounds["items"]["additionalProperties"] = False
    for name in ("label", "text"):
        sounds["items"]["properties"][name]["maxLength"] = max_text_chars
    return schema


def user_message(prompt: str, image: object | None = None) -> dict:
    """One user turn: the image, then the instruction (the layout VLM chat templates expect)."""
    picture = {"type": "image"} if image is None else {"type": "image", "image": image}
    return {"role": "user", "content": [picture, {"type": "text", "text": prompt}]}


def openai_user_message(prompt: str, jpeg: bytes) -> dict:
    """The same user turn in OpenAI chat format, the image inline as a base64 data URL; vLLM's chat
    parser and every OpenAI-compatible server accept it."""
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}],
    }


# Paper A.2: images whose caption names one of these are graphics, not scenes that sound.
NON_SONIC_WORDS = ("logo", "icon", "emblem", "symbol", "trademark", "sign")
_NON_SONIC = re.compile(r"\b(" + "|".join(NON_SONIC_WORDS) + r")s?\b", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
# json decodes an escaped surrogate pair to one character, so any surrogate left is a lone half.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def is_non_sonic(caption: str) -> bool:
    return bool(_NON_SONIC.search(caption or ""))


@dataclass(frozen=True)
class Concept:
    label: str
    text: str


@dataclass
class ParsedAnswer:
    caption: str | None = None
    concepts: list[Concept] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    dropped_empty: int = 0


def _clean(value: object) -> str:
    """A string field of the answer, whitespace collapsed and storable as UTF-8; "" if not a string."""
    if not isinstance(value, str):
        return ""
    return " ".join(_LONE_SURROGATE.sub("\ufffd", value).split())


def parse_answer(answer: str | None, max_chars: int, max_concepts: int) -> ParsedAnswer:
    if answer is None or not answer.strip():
        return ParsedAnswer(error="empty answer", error_kind="empty_answer")
    if len(answer) > max_chars:
        return ParsedAnswer(
            error=f"answer is {len(answer)} characters, over the limit of {max_chars}", error_kind="answer_too_long"
        )
    text = _FENCE.sub("", answer.strip())
    start = text.find("{")
    if start < 0:
        return ParsedAnswer(error=f"answer holds no JSON object: {answer[:80]!r}", error_kind="bad_answer")
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return ParsedAnswer(
            error=f"answer is not valid JSON ({exc.msg} at character {exc.pos}): {answer[:80]!r}",
            error_kind="bad_answer",
        )
    except RecursionError:
        return ParsedAnswer(
            error=f"answer is not valid JSON (nested too deeply): {answer[:80]!r}", error_kind="bad_answer"
        )
    caption, sounds = value.get("caption"), value.get("sounds")
    if not isinstance(caption, str) or not isinstance(sounds, list):
        return ParsedAnswer(error="answer lacks a string 'caption' and a list 'sounds'", error_kind="bad_answer")
    parsed = ParsedAnswer(caption=_clean(caption))
    seen: set[str] = set()
    for item in sounds:
        if not isinstance(item, dict):
            parsed.dropped_empty += 1
            continue
        description = _clean(item.get("text"))
        label = _clean(item.get("label")) or description
        if not description:
            parsed.dropped_empty += 1
            continue
        if description.lower() in seen:
            continue
        seen.add(description.lower())
        parsed.concepts.append(Concept(label, description))
    parsed.concepts = parsed.concepts[:max_concepts]
    return parsed


def answers_table(rows: list[dict], answers: list[str | None]) -> pa.Table:
    """Image rows plus each one's raw answer: what every VLM backend returns."""
    columns = {f.name: [row[f.name] for row in rows] for f in IMAGES}
    return make_table(ANSWERS, {**columns, "answer": answers})
