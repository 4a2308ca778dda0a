"""Licences and attribution: normalizing licence values, allow/deny patterns, reading metadata files
and matching their keys to sources and images, and relabelling a pool's clips files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.licences.metadata import (
    Credit,
    MetadataError,
    match_images,
    match_sources,
    read_metadata,
    read_metadata_file,
    source_name,
)
from stages.licences.spdx import allowed_rows, license_allowed, normalize_license, requires_credit

SPELLINGS = [
    ("CC0", "CC0-1.0"),
    ("cc0 1.0 universal", "CC0-1.0"),
    ("Creative Commons Zero", "CC0-1.0"),
    ("http://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0"),
    ("public domain", "LicenseRef-Public-Domain"),
    ("https://creativecommons.org/publicdomain/mark/1.0/", "LicenseRef-Public-Domain"),
    ("Creative Commons Attribution 4.0", "CC-BY-4.0"),
    ("Creative Commons Attribution 4.0 International", "CC-BY-4.0"),
    ("cc-by 3.0", "CC-BY-3.0"),
    ("CC BY 4", "CC-BY-4.0"),
    ("CC-BY-4.0", "CC-BY-4.0"),
    ("http://creativecommons.org/licenses/by/3.0/", "CC-BY-3.0"),
    ("https://creativecommons.org/licenses/by-nc/4.0/legalcode", "CC-BY-NC-4.0"),
    ("http://creativecommons.org/licenses/by-nc-sa/3.0/us/", "CC-BY-NC-SA-3.0-US"),
    ("Attribution-NonCommercial 3.0", "CC-BY-NC-3.0"),
    ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "CC-BY-NC-SA-4.0"),
    ("CC BY-SA 4.0", "CC-BY-SA-4.0"),
    ("cc by nc nd 2.5", "CC-BY-NC-ND-2.5"),
    ("Creative Commons Attribution-NoDerivatives 4.0", "CC-BY-ND-4.0"),
    ("CC BY-NC", "LicenseRef-CC-BY-NC"),
    ("Sampling+", "LicenseRef-Sampling-Plus"),
    ("sampling plus 1.0", "LicenseRef-Sampling-Plus"),
    ("http://creativecommons.org/licenses/sampling+/1.0/", "LicenseRef-Sampling-Plus"),
    ("NC Sampling+", "LicenseRef-NC-Sampling-Plus"),
    ("mit", "MIT"),
    ("LicenseRef-My-Own", "LicenseRef-My-Own"),
    ("BBC RemArc licence (non-commercial)", "LicenseRef-BBC-RemArc-licence-non-commercial"),
    ("CC BY 5.0", "LicenseRef-CC-BY-5.0"),
    ("CC BY-ND-SA 4.0", "LicenseRef-CC-BY-ND-SA-4.0"),
    ("  ", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), SPELLINGS)
def test_licence_spellings_normalize_to_one_id(raw, expected):
    assert normalize_license(raw) == expected


@pytest.mark.parametrize(
    ("license_id", "credited"),
    [
        ("CC-BY-4.0", True),
        ("CC-BY-NC-SA-3.0", True),
        ("LicenseRef-Sampling-Plus", True),
        ("LicenseRef-BBC-RemArc", True),
        ("CC0-1.0", False),
        ("LicenseRef-Public-Domain", False),
        (None, False),
    ],
)
def test_every_licence_but_cc0_and_public_domain_is_credited(license_id, credited):
    assert requires_credit(license_id) is credited


@pytest.mark.parametrize(
    ("license_id", "allow", "deny", "allowed"),
    [
        ("CC-BY-NC-4.0", [], ["CC-BY-NC-*"], False),
        ("CC-BY-NC-SA-3.0", [], ["CC-BY-NC-*"], False),
        ("CC-BY-4.0", [], ["CC-BY-NC-*"], True),
        ("cc-by-nc-4.0", [], ["CC-BY-NC-*"], False),
        (None, [], ["unknown"], False),
        (None, [], ["CC-BY-NC-*"], True),
        (None, ["CC0-1.0", "CC-BY-*"], [], False),
        ("CC0-1.0", ["CC0-1.0", "CC-BY-*"], [], True),
        ("CC-BY-SA-4.0", ["CC-BY-*"], ["*-SA-*"], False),
        ("LicenseRef-Sampling-Plus", [], [], True),
    ],
)
def test_allow_and_deny_patterns(license_id, allow, deny, allowed):
    assert license_allowed(license_id, allow, deny) is allowed


def test_allowed_rows_counts_what_each_licence_lost():
    table = pa.table({"clip_id": list("abcde"), "license": ["CC-BY-NC-4.0", "CC0-1.0", None, "CC-BY-NC-3.0", None]})
    kept, removed = allowed_rows(table, [], ["CC-BY-NC-*", "unknown"])
    assert kept.column("clip_id").to_pylist() == ["b"]
    assert removed == {"CC-BY-NC-4.0": 1, "CC-BY-NC-3.0": 1, "unknown": 2}


def write_csv(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_jsonl_and_parquet_files_read_alike(tmp_path):
    csv_file = write_csv(
        tmp_path / "meta.csv",
        "source,license,attribution,source_url,title,extra\n"
        "dog.wav,cc-by 3.0,Ann,https://example.org/dog,A dog,x\n"
        "0042.wav,CC0,,,1984,y\n",
    )
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "source": "dog.wav",
                "license": "cc-by 3.0",
                "attribution": "Ann",
                "source_url": "https://example.org/dog",
                "title": "A dog",
            }
        )
        + "\n\n"
        + json.dumps({"source": "0042.wav", "license": "CC0", "title": 1984})
        + "\n"
    )
    parquet = tmp_path / "meta.parquet"
    pq.write_table(
        pa.table(
            {
                "source": ["dog.wav", "0042.wav"],
                "license": ["cc-by 3.0", "CC0"],
                "attribution": ["Ann", None],
                "source_url": ["https://example.org/dog", ""],
                "title": ["A dog", "1984"],
            }
        ),
        parquet,
    )
    expected = {
        "dog.wav": Credit("CC-BY-3.0", "cc-by 3.0", "Ann", "https://example.org/dog", "A dog"),
        "0042.wav": Credit("CC0-1.0", "CC0", None, None, "1984"),
    }
    for url in (csv_file, str(jsonl), str(parquet)):
        assert read_metadata_file(url, "source") == expected, url


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("nokey.csv", "file,license\na.wav,CC0\n", "no key column 'source'"),
        ("nothing.csv", "source,comment\na.wav,hi\n", "none of the columns license, attribution"),
        ("blank.csv", "source,license\na.wav,CC0\n ,CC0\n", "row 2 has no 'source'"),
        ("twice.csv", "source,license\na.wav,CC0\na.wav,CC-BY-4.0\n", "key 'a.wav' is given twice with different"),
        ("bad.jsonl", '{"source": "a.wav", "license": "CC0"}\nnot json\n', "line 2 is not JSON"),
        ("list.jsonl", '["a.wav", "CC0"]\n', "line 1 is not a JSON object"),
        ("broken.parquet", "not parquet at all", "not readable as parquet"),
        ("meta.txt", "source,license\n", "unknown format"),
    ],
)
def test_a_bad_metadata_file_is_an_error_naming_it_and_why(tmp_path, name, text, reason):
    url = write_csv(tmp_path / name, text)
    with pytest.raises(MetadataError, match=f"metadata file {url}: .*") as error:
        read_metadata([url], "source")
    assert reason in str(error.value)


def test_a_missing_metadata_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(MetadataError, match=f"metadata file {tmp_path}/absent.csv: cannot read it"):
        read_metadata([str(tmp_path / "absent.csv")], "source")


def test_the_same_row_twice_is_one_row_and_two_files_that_disagree_are_an_error(tmp_path):
    same = write_csv(tmp_path / "a.csv", "source,license\nx.wav,CC0\nx.wav,CC0\n")
    also = write_csv(tmp_path / "b.csv", "source,license\nx.wav,CC0\n")
    assert read_metadata([same, also], "source")["x.wav"].credit.license == "CC0-1.0"
    other = write_csv(tmp_path / "c.csv", "source,license\nx.wav,CC-BY-4.0\n")
    with pytest.raises(MetadataError, match=f"metadata files {same} and {other} give key 'x.wav' different values"):
        read_metadata([same, other], "source")


def test_source_names_of_files_tar_members_and_parquet_rows():
    assert source_name("/data/fsd/123.wav") == "123.wav"
    assert source_name("s3://bucket/fsd/123.wav") == "123.wav"
    assert source_name("/data/a.tar#sub/dir/123.flac") == "123.flac"
    assert source_name("/data/rows.parquet#123.wav") == "123.wav"


def test_keys_match_full_uris_first_then_base_names(tmp_path):
    meta = write_csv(
        tmp_path / "m.csv",
        "source,license\n/data/a/dog.wav,CC0\ncat.wav,CC-BY-4.0\nrow7,CC-BY-NC-4.0\nghost.wav,CC0\n",
    )
    uris = ["/data/a/dog.wav", "/data/b/dog.wav", "/data/b/cat.wav", "/rows.parquet#row7", "/data/c/bird.wav"]
    matched, unmatched = match_sources(read_metadata([meta], "source"), uris)
    assert {uri: credit.license for uri, credit in matched.items()} == {
        "/data/a/dog.wav": "CC0-1.0",
        "/data/b/cat.wav": "CC-BY-4.0",
        "/rows.parquet#row7": "CC-BY-NC-4.0",
    }
    assert unmatched == ["ghost.wav"]


def test_a_full_uri_key_wins_over_a_base_name_key_for_the_same_source(tmp_path):
    meta = write_csv(tmp_path / "m.csv", "source,license\ndog.wav,CC-BY-4.0\n/data/a/dog.wav,CC0\n")
    matched, _ = match_sources(read_metadata([meta], "source"), ["/data/a/dog.wav"])
    assert matched["/data/a/dog.wav"].license == "CC0-1.0"


def test_a_base_name_two_sources_share_is_an_error_naming_both(tmp_path):
    meta = write_csv(tmp_path / "m.csv", "source,license\ndog.wav,CC0\n")
    with pytest.raises(MetadataError, match=f"{meta}: key 'dog.wav' is the base name of 2 sources") as error:
        match_sources(read_metadata([meta], "source"), ["/x/dog.wav", "/y/dog.wav"])
    assert "/x/dog.wav and /y/dog.wav" in str(error.value)


def test_image_keys_match_ids_then_uris(tmp_path):
    meta = write_csv(
        tmp_path / "i.csv",
        "image,license,attribution\nimg-1,CC-BY-4.0,Ann\n/shards/000.tar,CC0,\n/img/2.jpg,CC-BY-SA-4.0,Bo\nnone,CC0,\n",
    )
    ids = ["img-1", "img-2", "t-a", "t-b"]
    uris = ["/shards/000.tar", "/img/2.jpg", "/shards/000.tar", "/shards/000.tar"]
    matched, unmatched = match_images(read_metadata([meta], "image"), ids, uris)
    assert {i: c.license for i, c in matched.items()} == {
        "img-1": "CC-BY-4.0",
        "img-2": "CC-BY-SA-4.0",
        "t-a": "CC0-1.0",
        "t-b": "CC0-1.0",
    }
    assert unmatched == ["none"]


def audio_rows(path, **columns) -> str:
    """A Parquet file of audio rows (the bytes do not matter to listing) with extra columns."""
    rows = len(next(iter(columns.values())))
    table = pa.table({"audio": pa.array([b"RIFF"] * rows, pa.binary()), **columns})
    pq.write_table(table, path, row_group_size=2)
    return str(path)


def test_parquet_sources_carry_their_own_columns_and_metadata_files_win(tmp_path):
    from pipelines.pool.credits import source_credits
    from schemas.pool_config import PoolConfig
    from stages.io.sources import ParquetLayout, expand_audio_sources

    url = audio_rows(
        tmp_path / "rows.parquet",
        name=["a.wav", "b.wav", "c.wav"],
        lic=["cc-by 4.0", None, "Sampling+"],
        who=["Ann", "Bo", None],
    )
    sources, _ = expand_audio_sources([url], ParquetLayout("audio", "name"))
    meta = write_csv(tmp_path / "m.csv", "source,license,attribution\nc.wav,CC0,Cy\n")
    pool = PoolConfig(
        dir=str(tmp_path / "pool"),
        metadata=[meta],
        parquet={"id_column": "name", "license_column": "lic", "attribution_column": "who"},
    )
    credits = source_credits(pool, sources, [])
    assert credits.by_uri == {
        f"{url}#a.wav": Credit("CC-BY-4.0", "cc-by 4.0", "Ann", None, None),
        f"{url}#b.wav": Credit(None, None, "Bo", None, None),
        f"{url}#c.wav": Credit("CC0-1.0", "CC0", "Cy", None, None),
    }
    assert credits.unmatched_keys == []
    columns = credits.columns([f"{url}#a.wav", "/elsewhere/x.wav"])
    assert columns["license"] == ["CC-BY-4.0", None] and columns["attribution"] == ["Ann", None]


def test_a_parquet_source_without_a_named_column_is_an_error_naming_it(tmp_path):
    from stages.io.sources import ParquetLayout, expand_audio_sources
    from stages.licences.parquet_columns import parquet_credits

    url = audio_rows(tmp_path / "rows.parquet", name=["a.wav"])
    sources, _ = expand_audio_sources([url], ParquetLayout("audio", "name"))
    with pytest.raises(MetadataError, match=f"Parquet source {url}: no column 'lic'"):
        parquet_credits(sources, {"license": "lic"})


def test_relabelling_rewrites_only_the_clips_files_whose_credits_changed(tmp_path):
    from pipelines.pool.credits import SourceCredits, relabel_parts
    from schemas import POOL_CLIPS, make_table
    from schemas.layout import PoolLayout
    from stages.io import storage

    paths = PoolLayout(str(tmp_path / "pool"))
    for part, uri in (("part-a", "/a.wav"), ("part-b", "/b.wav")):
        rows = {name: [None, None] for name in POOL_CLIPS.names}
        rows |= {"clip_id": [f"{part}-0", f"{part}-1"], "source_id": ["s", "s"], "source_uri": [uri, uri]}
        rows |= {"chunk_index": [0, 1], "part": [part, part], "license": ["CC0-1.0"] * 2, "license_raw": ["CC0"] * 2}
        storage.write_parquet(paths.clips(part), make_table(POOL_CLIPS, rows))
    before = {
        part: (tmp_path / "pool" / "clips" / f"{part}.parquet").stat().st_mtime_ns for part in ("part-a", "part-b")
    }
    credits = SourceCredits(
        {
            "/a.wav": Credit("CC0-1.0", "CC0", None, None, None),
            "/b.wav": Credit("CC-BY-4.0", "CC BY 4.0", "Bo", None, None),
        },
        [],
    )
    assert relabel_parts(paths, credits, skip=set()) == 1
    assert (tmp_path / "pool" / "clips" / "part-a.parquet").stat().st_mtime_ns == before["part-a"]
    b = storage.read_parquet(paths.clips("part-b"))
    assert b.schema == POOL_CLIPS
    assert b.column("license").to_pylist() == ["CC-BY-4.0"] * 2 and b.column("attribution").to_pylist() == ["Bo"] * 2
    assert b.column("clip_id").to_pylist() == ["part-b-0", "part-b-1"]
    assert relabel_parts(paths, credits, skip=set()) == 0


@pytest.mark.parametrize(
    ("license_id", "hub"),
    [
        ("CC-BY-4.0", "cc-by-4.0"),
        ("CC0-1.0", "cc0-1.0"),
        ("CC-BY-NC-SA-3.0", "cc-by-nc-sa-3.0"),
        ("CC-BY-NC-SA-3.0-US", "other"),
        ("ODbL-1.0", "odbl"),
        ("MIT", "mit"),
        ("LicenseRef-Sampling-Plus", "other"),
        ("unknown", "unknown"),
    ],
)
def test_the_dataset_card_names_licences_by_the_hubs_ids(license_id, hub):
    from pipelines.sonify.credits import hub_license

    assert hub_license(license_id) == hub


def test_the_dataset_cards_licences_and_notes_cover_clips_and_images():
    from pipelines.sonify.credits import card_licenses, license_notes

    credits = {
        "clips_by_license": {"CC-BY-4.0": 3, "LicenseRef-Sampling-Plus": 1, "unknown": 2},
        "images_by_license": {"CC0-1.0": 5, "unknown": 1},
        "credited_clips": 4,
        "credited_images": 0,
    }
    assert card_licenses(credits) == ["cc-by-4.0", "cc0-1.0", "other", "unknown"]
    notes = license_notes(credits)
    assert "Distinct clips used: 3 under CC-BY-4.0, 1 under LicenseRef-Sampling-Plus, 2 under unknown." in notes
    assert "Images used: 5 under CC0-1.0, 1 under unknown." in notes
    assert "credit the 4 clips and 0 images" in notes
