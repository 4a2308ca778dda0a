"""Parsing VLM answers defensively, on a corpus of broken answers, and the non-sonic filter."""

import pytest

from stages.concepts import is_non_sonic, parse_answer

GOOD = '{"caption": "a dog on a lawn", "sounds": [{"label": "dog", "text": "a dog barking"}, {"label": "wind", "text": "wind in leaves"}]}'


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
    assert [(c.label, c.text) for c in parsed.concepts] == [("bus", "a bus braking"), ("people talking", "people talking"), ("a", "t1")]


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
