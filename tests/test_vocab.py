"""The manifest drives the modes; user lists, switched-off lists and bans change what prompts can contain."""

import json

import pytest

from core import Interrogator, VocabError, Vocabulary


@pytest.fixture(scope="module")
def builtin():
    return Vocabulary.builtin()


def _engine(clip, vocab, tmp_path):
    return Interrogator(clip, None, vocab, cache_dir=str(tmp_path / "cache"))


def test_manifest_roles_drive_the_modes(builtin):
    manifest = json.loads((pathlib_root() / "vocab" / "manifest.json").read_text())
    assert builtin.names == [entry["name"] for entry in manifest["lists"]]
    assert [tl.name for tl in builtin.pool] == [e["name"] for e in manifest["lists"] if e["role"] != "negative"]
    assert [tl.name for tl in builtin.by_role("negative")] == ["negative"]
    assert "sites" in {tl.name for tl in builtin.style}
    assert builtin["artists"].labels[0] == f"by {builtin['artists'].terms[0]}"
    sites = builtin["sites"]
    assert f"trending on {sites.terms[0]}" in sites.labels and len(sites.labels) == 4 * len(sites.terms)


def test_classic_takes_one_term_per_role(clip, builtin, images, tmp_path):
    prompt = _engine(clip, builtin, tmp_path).interrogate(images[0], "classic", captions="a cat")[0]
    parts = prompt.split(", ")
    labels = {role: {l for tl in builtin.by_role(role) for l in tl.labels} for role in ("site", "movement")}
    medium_artist = parts[1]
    assert any(medium_artist.startswith(m + " by ") or medium_artist.startswith(m + " inspired by ")
               for m in builtin["mediums"].terms)
    assert parts[2] in labels["site"] and parts[3] in labels["movement"]
    assert len(parts) == 7  # caption, medium+artist, site, movement, 3 flavors


def test_user_list_added_changes_the_output(clip, builtin, images, tmp_path):
    """Switch off the list holding the image's best label, then bring that label back through a user list."""
    full = _engine(clip, builtin, tmp_path).analyze(images[1], top=1)[0]
    home, ((label, _),) = max(((n, s) for n, s in full.items() if n != "negative"), key=lambda item: item[1][0][1])
    base = builtin.without(names=[home])
    before = _engine(clip, base, tmp_path).interrogate(images[1], "fast", captions="a cat", max_terms=1)[0]
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_words.txt").write_text(label + "\n", encoding="utf-8")
    extended = base.with_user_lists(str(user))
    assert extended["my_words"].role == "flavor"
    after = _engine(clip, extended, tmp_path).interrogate(images[1], "fast", captions="a cat", max_terms=1)[0]
    assert before != after == f"a cat, {label}"


def test_user_file_named_like_a_shipped_list_extends_it(builtin, tmp_path):
    known = builtin["artists"].terms[0]
    (tmp_path / "artists.txt").write_text(f"Zq Newpainter\n{known}\n", encoding="utf-8")
    extended = builtin.with_user_lists(str(tmp_path))
    assert extended["artists"].terms[-1] == "Zq Newpainter"
    assert len(extended["artists"].terms) == len(builtin["artists"].terms) + 1


def test_switched_off_category_never_appears(clip, builtin, images, tmp_path):
    no_artists = builtin.without(roles=["artist"])
    artist_labels = set(builtin["artists"].labels)
    engine = _engine(clip, no_artists, tmp_path)
    for mode in ("fast", "classic", "best"):
        parts = engine.interrogate(images[0], mode, captions="a cat", max_terms=32)[0].split(", ")
        assert not artist_labels.intersection(parts), mode
    with pytest.raises(VocabError, match="unknown list"):
        builtin.without(names=["nope"])


def test_banned_term_never_appears(clip, builtin, images, tmp_path):
    engine = _engine(clip, builtin, tmp_path)
    first = engine.interrogate(images[2], "fast", captions="a cat", max_terms=8)[0].split(", ")[1]
    word = first.split()[-1]
    banned = builtin.banning([word])
    assert all(word.lower() not in t.lower().split() for tl in banned.lists for t in tl.terms)
    engine = _engine(clip, banned, tmp_path)
    for mode in ("fast", "classic", "best", "negative", "style"):
        prompt = engine.interrogate(images[2], mode, captions="a cat", max_terms=8)[0]
        assert word.lower() not in prompt.lower().replace(",", " ").split(), (mode, prompt)


def test_reference_vocabulary_is_read_in_place():
    reference = Vocabulary.reference()
    assert reference.names == ["artists", "flavors", "mediums", "movements", "trendings", "negative"]
    assert "site-packages" in reference.source and len(reference["flavors"].terms) > 90000


def test_style_prompt_has_no_caption_and_only_style_terms(clip, builtin, images, tmp_path):
    prompt = _engine(clip, builtin, tmp_path).interrogate(images[0], "style", captions="a cat")[0]
    style_labels = {l for tl in builtin.style for l in tl.labels}
    parts = prompt.split(", ")
    assert "a cat" not in prompt and parts
    head = parts[0].split(" by ")[0].split(" inspired by ")[0]
    assert head in style_labels
    assert set(parts[1:]) <= style_labels


def pathlib_root():
    import pathlib

    return pathlib.Path(__file__).resolve().parent.parent
