"""Licence values as SPDX-style ids, which ones need a credit, and allow/deny patterns over them.

Pure functions of strings. Metadata spells one licence many ways ("Creative Commons Attribution
4.0", "cc-by 3.0", http://creativecommons.org/licenses/by/3.0/, "CC0"); `normalize_license` turns
each spelling it recognizes into one id, so that a deny pattern such as `CC-BY-NC-*` and the
attribution file see one value per licence. A value it does not recognize keeps its text as a
`LicenseRef-` id (SPDX's form for licences outside its list), and the pool table keeps the raw
value beside it in `license_raw`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fnmatch import fnmatchcase

import pyarrow as pa

CC0 = "CC0-1.0"
# Not a licence but a status: a work whose rights expired or were waived without CC0's wording.
PUBLIC_DOMAIN = "LicenseRef-Public-Domain"
SAMPLING_PLUS = "LicenseRef-Sampling-Plus"
NC_SAMPLING_PLUS = "LicenseRef-NC-Sampling-Plus"
# What a null licence (a source no metadata names) is called in allow and deny patterns.
UNKNOWN = "unknown"
# Licences known to ask for no credit; every other value, unrecognized ones included, is credited.
NO_CREDIT_NEEDED = frozenset({CC0, PUBLIC_DOMAIN, "PDDL-1.0", "Unlicense"})
# SPDX ids outside Creative Commons that metadata may already give, by their lower-case spelling.
OTHER_SPDX_IDS = {i.lower(): i for i in ("MIT", "Apache-2.0", "PDDL-1.0", "ODC-By-1.0", "ODbL-1.0", "Unlicense")}
CC_VERSIONS = frozenset({"1.0", "2.0", "2.5", "3.0", "4.0"})
# The order of a Creative Commons licence's elements in its SPDX id (CC-BY-NC-SA-4.0).
CC_ELEMENTS = ("BY", "NC", "ND", "SA")
# Words of a licence name that say nothing about which licence it is.
FILLER_WORDS = frozenset({"license", "licence", "international", "unported", "generic", "public"})
# Spelled-out element names, rewritten to their abbreviation before the words are read.
ELEMENT_WORDS = [
    (re.compile(r"non[\s_-]?commercial"), " nc "),
    (re.compile(r"share[\s_-]?alike"), " sa "),
    (re.compile(r"no[\s_-]?deriv(?:ative)?s?|no[\s_-]?derivative[\s_-]?works"), " nd "),
    (re.compile(r"attribution"), " by "),
]
CC_URL = re.compile(
    r"creativecommons\.org/(licenses|publicdomain)/([a-z+-]+)(?:/(\d(?:\.\d)?))?(?:/([a-z]{2})(?![a-z]))?",
    re.IGNORECASE,
)
CC0_TEXT = re.compile(r"^(?:cc[\s_-]?0|cc[\s_-]?zero|creative\s+commons\s+(?:zero|0))(?:[\s_-]*(?:v?1\.0|1))?\b")
SAMPLING_TEXT = re.compile(r"^(?:creative\s+commons\s+|cc[\s_-]+)?(nc[\s_-]?)?sampling\s*(?:\+|plus)(?:[\s_-]*1\.0)?$")
LICENSE_REF_CHARS = re.compile(r"[^A-Za-z0-9.]+")


def normalize_license(raw: str | None) -> str | None:
    """The SPDX-style id of a licence as metadata spells it; None for a null or blank value.

    Creative Commons licences in any spelling become `CC-BY[-NC][-ND][-SA]-<version>` (a ported
    licence keeps its jurisdiction, `CC-BY-3.0-US`; a name without a version becomes
    `LicenseRef-CC-BY...`, since SPDX ids carry one). CC0 and the public-domain dedication become
    `CC0-1.0`; "public domain" alone and the Public Domain Mark become `LicenseRef-Public-Domain`
    (a status, not CC0's waiver); Sampling+ becomes `LicenseRef-Sampling-Plus` (NC Sampling+
    `LicenseRef-NC-Sampling-Plus`). A few other SPDX ids are recognized in any case; any other
    value becomes `LicenseRef-` and its letters, digits and dots, other characters folded to `-`.
    """
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if text.startswith("LicenseRef-"):
        return text
    lowered = " ".join(text.lower().split())
    url = CC_URL.search(lowered)
    if url:
        found = _from_cc_url(*url.groups())
    elif lowered in OTHER_SPDX_IDS:
        found = OTHER_SPDX_IDS[lowered]
    elif CC0_TEXT.match(lowered):
        found = CC0
    elif lowered.rstrip(".") in ("public domain", "pd"):
        found = PUBLIC_DOMAIN
    elif SAMPLING_TEXT.match(lowered):
        found = NC_SAMPLING_PLUS if SAMPLING_TEXT.match(lowered).group(1) else SAMPLING_PLUS
    else:
        found = _from_cc_name(lowered)
    return found or "LicenseRef-" + LICENSE_REF_CHARS.sub("-", text).strip("-")


def _from_cc_url(kind: str, name: str, version: str | None, jurisdiction: str | None) -> str | None:
    if kind == "publicdomain":
        return {"zero": CC0, "mark": PUBLIC_DOMAIN}.get(name)
    if name in ("sampling+", "nc-sampling+"):
        return NC_SAMPLING_PLUS if name.startswith("nc") else SAMPLING_PLUS
    return _cc_id(name.split("-"), version, jurisdiction)


def _from_cc_name(lowered: str) -> str | None:
    """A Creative Commons licence named in words: "Creative Commons Attribution-NonCommercial 4.0
    International", "cc-by 3.0", "CC BY-SA 4.0", "Attribution 3.0"."""
    for pattern, abbreviation in ELEMENT_WORDS:
        lowered = pattern.sub(abbreviation, lowered)
    words = [w for w in re.split(r"[\s_/,()-]+", lowered) if w]
    if words[:2] == ["creative", "commons"]:
        words = words[2:]
    elif words[:1] == ["cc"]:
        words = words[1:]
    elif words[:1] != ["by"]:
        return None
    versions = [w for w in words if re.fullmatch(r"v?\d(?:\.\d)?", w)]
    elements = [w for w in words if w not in versions and w not in FILLER_WORDS]
    if len(versions) > 1:
        return None
    return _cc_id(elements, versions[0].lstrip("v") if versions else None, None)


def _cc_id(elements: Sequence[str], version: str | None, jurisdiction: str | None) -> str | None:
    """`CC-<elements>-<version>[-<jurisdiction>]`, elements in SPDX's order; None where the elements
    are not a Creative Commons licence (BY first, each known element once)."""
    upper = [e.upper() for e in elements]
    if not upper or upper[0] != "BY" or len(set(upper)) != len(upper) or not set(upper) <= set(CC_ELEMENTS):
        return None
    if "ND" in upper and "SA" in upper:
        return None
    name = "CC-" + "-".join(e for e in CC_ELEMENTS if e in upper)
    if version is None:
        return f"LicenseRef-{name}"
    version = version if "." in version else f"{version}.0"
    if version not in CC_VERSIONS:
        return None
    return f"{name}-{version}" + (f"-{jurisdiction.upper()}" if jurisdiction else "")


def requires_credit(license_id: str | None) -> bool:
    """Whether a clip or image under this licence is listed in the attribution file: every licence but
    CC0 and the public-domain ones, unrecognized ones included (whether they ask for credit is not
    known, so they get it). A null licence (no metadata) has no one to credit."""
    return license_id is not None and license_id not in NO_CREDIT_NEEDED


def license_allowed(license_id: str | None, allow: Sequence[str], deny: Sequence[str]) -> bool:
    """Whether a licence passes sonify.licenses: it matches an allow pattern (or allow is empty) and
    no deny pattern. Patterns are fnmatch globs compared without regard to case; a null licence is
    matched as `unknown`."""
    value = (license_id or UNKNOWN).casefold()
    if allow and not any(fnmatchcase(value, pattern.casefold()) for pattern in allow):
        return False
    return not any(fnmatchcase(value, pattern.casefold()) for pattern in deny)


def allowed_rows(table: pa.Table, allow: Sequence[str], deny: Sequence[str]) -> tuple[pa.Table, Counter]:
    """The rows of `table` (with a `license` column) whose licence passes allow and deny
    (`license_allowed`), and how many rows each licence lost (`unknown` for null)."""
    licenses = table.column("license").to_pylist()
    verdicts = {value: license_allowed(value, allow, deny) for value in set(licenses)}
    keep = [verdicts[value] for value in licenses]
    removed = Counter(value or UNKNOWN for value, kept in zip(licenses, keep) if not kept)
    return table.filter(pa.array(keep, pa.bool_())), removed
