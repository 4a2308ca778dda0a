"""Parsing VLM answers defensively, on a corpus of broken answers, and the non-sonic filter."""

import pyarrow as pa
import pytest

from schemas import ANSWERS, SCENES
from stages.vlm.concepts import is_non_sonic, parse_answer
from stages.vlm.parse_stage import ParseConcepts

GOOD = (
    '{"caption": "a dog on a lawn", "sounds": [{"label": "dog", "text": "a dog barking"}, '
    '{"label": "wind", "text": "wind in leaves"}]}'
)


def test_good_answer():
    parsed = parse_answer(GOOD, 4000, 8)
    assert parsed.error is None
    assert parsed.caption == "a dog on a lawn"
    assert [(c.label, c.text) for c in parsed.concepts] == [("dog", "a dog barking"), ("wind", "wind in leaves")]


@pytest.mark.parametrize(
    "answer",
    [f"```json\n{GOOD}\n```", f"Sure! Here it is:\n{GOOD}\nHope this helps.", GOOD.replace(", ", ",\n  ")],
)
def test_wrapped_answers_still_parse(answer):
    parsed = parse_answer(answer, 4000, 8)
    assert parsed.error is None and len(parsed.concepts) == 2


@pytest.mark.parametrize(
    "answer, reason",
    [
        (None, "empty answer"),
        ("", "empty answer"),
        ("   \n", "empty answer"),
        ("a dog and some wind", "no JSON object"),
        (GOOD[:60], "not valid JSON"),
        ('{"caption": "x", "sounds": [{"label": "dog", "text": "bark"}', "not valid JSON"),
        ("[1, 2, 3]", "no JSON object"),
        ('"just a string"', "no JSON object"),
        ('{"caption": 3, "sounds": []}', "lacks"),
        ('{"caption": "x", "sounds": "dog"}', "lacks"),
        ('{"sounds": []}', "lacks"),
        ("{" + '"caption": "x", "sounds": []' + " " * 5000 + "}", "over the limit"),
    ],
)
def test_broken_answers_become_errors(answer, reason):
    parsed = parse_answer(answer, 4000, 8)
    assert parsed.error is not None and reason in parsed.error
    assert parsed.error_kind == {"empty answer": "empty_answer", "over the limit": "answer_too_long"}.get(
        reason, "bad_answer"
    )
    assert parsed.concepts == []


def test_empty_texts_are_dropped_and_counted_duplicates_merged_and_count_capped():
    answer = (
        '{"caption": "street", "sounds": [{"label": "car", "text": ""}, {"label": "car", "text": "   "}, "junk",'
        ' {"label": "bus", "text": "a bus  braking"}, {"label": "bus", "text": "A bus braking"},'
        ' {"text": "people talking"}, {"label": "a", "text": "t1"}, {"label": "b", "text": "t2"}]}'
    )
    parsed = parse_answer(answer, 4000, 3)
    assert parsed.error is None
    assert parsed.dropped_empty == 3
    assert [(c.label, c.text) for c in parsed.concepts] == [
        ("bus", "a bus braking"),
        ("people talking", "people talking"),
        ("a", "t1"),
    ]


@pytest.mark.parametrize(
    "caption, dropped",
    [
        ("a company logo on white", True),
        ("app icons in a grid", True),
        ("a stop sign at a crossing", True),
        ("Trademark symbol", True),
        ("a golden emblem", True),
        ("a signal light on a train platform", False),
        ("dogs designing a sandcastle", False),
        ("a busy street with cars", False),
    ],
)
def test_non_sonic_captions(caption, dropped):
    assert is_non_sonic(caption) is dropped


def test_deeply_nested_answer_is_an_error_not_a_crash():
    answer = '{"caption": "x", "sounds": ' + "[" * 3000 + "]" * 3000 + "}"
    parsed = parse_answer(answer, 10_000, 8)
    assert parsed.error is not None and "nested too deeply" in parsed.error


def test_texts_that_are_not_strings_are_dropped_and_counted():
    answer = (
        '{"caption": "a yard", "sounds": [{"label": "a", "text": 7}, {"label": "b", "text": ["x"]}, '
        '{"label": "c", "text": null},'
        ' {"label": 5, "text": "a dog barking"}]}'
    )
    parsed = parse_answer(answer, 4000, 8)
    assert parsed.dropped_empty == 3
    assert [(c.label, c.text) for c in parsed.concepts] == [("a dog barking", "a dog barking")]


def test_lone_surrogates_are_replaced_so_arrow_can_store_them():
    answer = r'{"caption": "a cat \ud83d", "sounds": [{"label": "cat \ud83d\ude00", "text": "a cat \udc00 meowing"}]}'
    parsed = parse_answer(answer, 4000, 8)
    assert parsed.caption == "a cat \ufffd"
    assert [(c.label, c.text) for c in parsed.concepts] == [("cat \U0001f600", "a cat \ufffd meowing")]
    assert (
        pa.array([parsed.caption, parsed.concepts[0].label, parsed.concepts[0].text]).to_pylist()[1] == "cat \U0001f600"
    )


def scene_row(image_id: str, answer: str | None, **fields) -> dict:
    row = {f.name: None for f in ANSWERS}
    row.update(image_id=image_id, uri=f"/images/{image_id}.jpg", answer=answer, **fields)
    return row


def test_parse_stage_gives_every_answer_a_row():
    rows = [
        scene_row("good", GOOD),
        scene_row("prose", "I see a dog."),
        scene_row("empty", ""),
        scene_row("cut", GOOD[:50]),
        scene_row("long", GOOD + " " * 5000),
        scene_row(
            "blank texts", '{"caption": "a park", "sounds": [{"label": "x", "text": " "}, {"label": "y", "text": ""}]}'
        ),
        scene_row("logo", '{"caption": "a red logo", "sounds": [{"label": "x", "text": "hum"}]}'),
        scene_row("in tar", None, member="s1.jpg"),
        scene_row("unreadable", None, error="/images/unreadable.jpg: empty file (0 bytes)", error_stage="images"),
    ]
    out = ParseConcepts("qwen", max_answer_chars=4000, max_concepts=8).process_batch(
        pa.Table.from_pylist(rows, schema=ANSWERS)
    )
    assert out.schema.equals(SCENES, check_metadata=False)
    scenes = {r["image_id"]: r for r in out.to_pylist()}
    assert len(scenes) == len(rows) and all(r["vlm"] == "qwen" for r in scenes.values())
    assert (
        scenes["good"]["error"] is None and scenes["good"]["dropped"] is None and len(scenes["good"]["concepts"]) == 2
    )
    for image_id, reason in [
        ("prose", "no JSON object"),
        ("empty", "empty answer"),
        ("cut", "not valid JSON"),
        ("long", "over the limit"),
    ]:
        assert (
            scenes[image_id]["error"].startswith(f"/images/{image_id}.jpg: qwen: ")
            and reason in scenes[image_id]["error"]
        )
        assert scenes[image_id]["error_stage"] == "concepts"
    assert [scenes[i]["error_kind"] for i in ("prose", "empty", "cut", "long", "good")] == [
        "bad_answer",
        "empty_answer",
        "bad_answer",
        "answer_too_long",
        None,
    ]
    assert scenes["in tar"]["error"] == "/images/in tar.jpg#s1.jpg: qwen: empty answer"
    assert scenes["blank texts"]["dropped"] == "no_concepts" and scenes["blank texts"]["dropped_empty_concepts"] == 2
    assert scenes["logo"]["dropped"] == "non_sonic"
    assert scenes["unreadable"]["error"] == "/images/unreadable.jpg: empty file (0 bytes)"
    assert scenes["unreadable"]["error_stage"] == "images"
