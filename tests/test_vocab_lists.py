"""Checks for the project's own vocabulary lists in vocab/.

Standard library + pytest only (no torch): these tests read the text files and
the manifest and check format, sizes, manifest consistency and a few content
rules (no subject nouns in style lists, lowercase outside artists).
"""

import json
import re
from pathlib import Path

import pytest

VOCAB_DIR = Path(__file__).resolve().parent.parent / "vocab"
MANIFEST_PATH = VOCAB_DIR / "manifest.json"

ALLOWED_ROLES = {"artist", "flavor", "medium", "movement", "site", "negative"}

# Minimum number of terms per list (by manifest name).
MINIMUMS = {
    "mediums": 150,
    "movements": 250,
    "artists": 3000,
    "sites": 20,
    "lighting": 400,
    "color": 400,
    "composition": 600,
    "technique": 600,
    "mood": 300,
    "quality": 150,
    "flavors": 4000,
    "negative": 150,
}

# Whole-word subject nouns that must not appear in style lists (artists excepted:
# names such as "Man Ray" are people, not subjects).
SUBJECT_DENY = {
    "dog", "dogs", "puppy", "cat", "cats", "kitten", "castle", "castles",
    "woman", "women", "man", "men", "girl", "girls", "boy", "boys",
    "car", "cars", "house", "houses", "tree", "trees", "horse", "horses",
    "child", "children", "baby", "dragon", "dragons", "robot", "robots",
}
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Terms outside artists.txt that may contain uppercase letters. Kept
# deliberately empty: every non-artist list is written in lowercase.
UPPERCASE_ALLOWED = set()


def _load_manifest():
    with MANIFEST_PATH.open("r", encoding="utf-8") as fh:
        return json.load(fh)


MANIFEST = _load_manifest()
LISTS = MANIFEST["lists"]
LIST_IDS = [entry["name"] for entry in LISTS]


def _read_bytes(entry):
    return (VOCAB_DIR / entry["file"]).read_bytes()


def _read_lines(entry):
    text = _read_bytes(entry).decode("utf-8", errors="strict")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def subject_hits(term):
    """Return the deny-listed subject nouns that occur as whole words in term."""
    words = _WORD_RE.findall(term.lower())
    return sorted({w for w in words if w in SUBJECT_DENY})


# ---------------------------------------------------------------- manifest


def test_manifest_shape():
    assert MANIFEST.get("version") == 1
    assert isinstance(LISTS, list) and LISTS
    for entry in LISTS:
        assert set(entry) >= {"name", "file", "role", "style"}, entry
        assert isinstance(entry["style"], bool), entry


def test_manifest_names_and_files_unique():
    names = [e["name"] for e in LISTS]
    files = [e["file"] for e in LISTS]
    assert len(names) == len(set(names)), names
    assert len(files) == len(set(files)), files


def test_manifest_roles_valid():
    bad = [(e["name"], e["role"]) for e in LISTS if e["role"] not in ALLOWED_ROLES]
    assert not bad, bad


def test_exactly_one_negative_list():
    negatives = [e["name"] for e in LISTS if e["role"] == "negative"]
    assert len(negatives) == 1, negatives
    neg = next(e for e in LISTS if e["role"] == "negative")
    assert neg["style"] is False


def test_every_manifest_file_exists():
    missing = [e["file"] for e in LISTS if not (VOCAB_DIR / e["file"]).is_file()]
    assert not missing, missing


def test_every_txt_file_is_in_manifest():
    listed = {e["file"] for e in LISTS}
    on_disk = {p.name for p in VOCAB_DIR.glob("*.txt")}
    assert on_disk - listed == set(), sorted(on_disk - listed)


def test_every_list_has_a_minimum():
    assert set(LIST_IDS) == set(MINIMUMS), set(LIST_IDS) ^ set(MINIMUMS)


# ---------------------------------------------------------------- per-file format


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_strict_utf8(entry):
    _read_bytes(entry).decode("utf-8", errors="strict")


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_ends_with_newline_and_no_cr(entry):
    data = _read_bytes(entry)
    assert data.endswith(b"\n")
    assert b"\r" not in data
    assert not data.startswith(b"\xef\xbb\xbf"), "BOM not allowed"


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_no_blank_lines(entry):
    blank = [i + 1 for i, line in enumerate(_read_lines(entry)) if not line.strip()]
    assert not blank, f"blank lines at {blank[:10]}"


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_no_surrounding_whitespace(entry):
    bad = [line for line in _read_lines(entry) if line != line.strip()]
    assert not bad, bad[:10]


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_no_duplicates_within_file(entry):
    seen, dups = set(), []
    for line in _read_lines(entry):
        key = line.casefold()
        if key in seen:
            dups.append(line)
        seen.add(key)
    assert not dups, dups[:10]


@pytest.mark.parametrize("entry", LISTS, ids=LIST_IDS)
def test_minimum_count(entry):
    count = len(_read_lines(entry))
    assert count >= MINIMUMS[entry["name"]], (entry["name"], count)


def test_no_duplicates_across_files():
    owner = {}
    clashes = []
    for entry in LISTS:
        for line in _read_lines(entry):
            key = line.casefold()
            if key in owner and owner[key] != entry["name"]:
                clashes.append((line, owner[key], entry["name"]))
            owner.setdefault(key, entry["name"])
    assert not clashes, clashes[:20]


# ---------------------------------------------------------------- content rules


def test_subject_matcher_is_whole_word():
    assert subject_hits("a man standing") == ["man"]
    assert subject_hits("portrait of a woman") == ["woman"]
    assert subject_hits("manga") == []
    assert subject_hits("craftsmanship") == []
    assert subject_hits("catalogue photo") == []
    assert subject_hits("carved wood") == []
    assert subject_hits("greenhouse glow") == []


STYLE_LISTS = [e for e in LISTS if e["style"] and e["role"] != "artist"]


@pytest.mark.parametrize("entry", STYLE_LISTS, ids=[e["name"] for e in STYLE_LISTS])
def test_no_subject_nouns_in_style_lists(entry):
    bad = [(line, subject_hits(line)) for line in _read_lines(entry) if subject_hits(line)]
    assert not bad, bad[:20]


NON_ARTIST_LISTS = [e for e in LISTS if e["role"] != "artist"]


@pytest.mark.parametrize("entry", NON_ARTIST_LISTS, ids=[e["name"] for e in NON_ARTIST_LISTS])
def test_lowercase_outside_artists(entry):
    bad = [
        line for line in _read_lines(entry)
        if line != line.lower() and line not in UPPERCASE_ALLOWED
    ]
    assert not bad, bad[:20]


ARTIST_LISTS = [e for e in LISTS if e["role"] == "artist"]


@pytest.mark.parametrize("entry", ARTIST_LISTS, ids=[e["name"] for e in ARTIST_LISTS])
def test_artist_names_look_like_names(entry):
    bad = []
    for line in _read_lines(entry):
        if line.lower().startswith(("by ", "inspired by ")):
            bad.append(line)
        elif not any(ch.isupper() for ch in line):
            bad.append(line)
    assert not bad, bad[:20]


def test_site_names_are_bare():
    sites = [e for e in LISTS if e["role"] == "site"]
    assert sites
    for entry in sites:
        bad = [
            line for line in _read_lines(entry)
            if line.startswith(("trending on", "featured on")) or "contest winner" in line
        ]
        assert not bad, bad
