"""Term lists: reading them, their roles, and the phrases the engine scores.

A vocabulary is an ordered set of named lists, each with a role. The order matters: it is the order labels are
ranked in, which decides ties exactly as the reference does (artists, flavors, mediums, movements, sites).
"""

import importlib.util
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Sequence, Tuple

from .ban import Ban
from .errors import VocabError
from .files import get, inside, json_kind, read_json

ROLES = ("artist", "flavor", "medium", "movement", "site", "negative")
MANIFEST = "manifest.json"
# Longer lines are no prompt phrase (CLIP reads 77 tokens, about 300 characters of text), and tokenising one giant
# word takes minutes; list terms run to 52 characters in the reference's lists.
MAX_TERM_CHARS = 200

# The reference hard-codes these in its code, not its data files; they define its "trending" labels.
REFERENCE_SITES = (
    "Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble", "flickr", "instagram", "pexels",
    "pinterest", "pixabay", "pixiv", "polycount", "reddit", "shutterstock", "tumblr", "unsplash", "zbrush central",
)

_REFERENCE_LAYOUT = (
    {"name": "artists", "file": "artists.txt", "role": "artist", "style": True},
    {"name": "flavors", "file": "flavors.txt", "role": "flavor", "style": True},
    {"name": "mediums", "file": "mediums.txt", "role": "medium", "style": True, "exhaustive": True},
    {"name": "movements", "file": "movements.txt", "role": "movement", "style": True},
    {"name": "trendings", "terms": REFERENCE_SITES, "role": "site", "style": True},
    {"name": "negative", "file": "negative.txt", "role": "negative", "style": False},
)


def read_terms(path: str) -> Tuple[str, ...]:
    """One term per line, UTF-8; surrounding whitespace, blank lines and repeated terms dropped."""
    try:
        with open(path, "r", encoding="utf-8-sig") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        raise VocabError(f"term list not found: {path}") from None
    except IsADirectoryError:
        raise VocabError(f"term list {path} is a folder; a term list is a .txt file with one term per line.") from None
    except OSError as error:
        raise VocabError(f"cannot read term list {path} ({error.strerror or error}); check that it is a readable "
                         f"file.") from None
    except UnicodeDecodeError as error:
        raise VocabError(f"term list {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"save it as UTF-8.") from None
    return tuple(dict.fromkeys(term for term in (line.strip() for line in lines) if term))


def label_forms(role: str, terms: Sequence[str]) -> List[str]:
    """The phrases the engine scores for a list: artists and sites get the reference's prompt forms."""
    if role == "artist":
        return [f"by {t}" for t in terms] + [f"inspired by {t}" for t in terms]
    if role == "site":
        return (list(terms) + [f"trending on {t}" for t in terms] + [f"featured on {t}" for t in terms]
                + [f"{t} contest winner" for t in terms])
    return list(terms)


@dataclass(frozen=True)
class TermList:
    name: str
    role: str
    terms: Tuple[str, ...]
    style: bool = True
    ban: Ban = Ban()
    exhaustive: bool = False  # every image should match one of its terms: precise mode says so when none does

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise VocabError(f"a term list's name must be a non-empty string, not {self.name!r}.")
        if self.role not in ROLES:
            raise VocabError(f"list {self.name!r} has role {self.role!r}; use one of {', '.join(ROLES)}.")
        terms = () if isinstance(self.terms, str) else tuple(self.terms)
        odd = [t for t in terms if not isinstance(t, str)]
        if odd or isinstance(self.terms, str):
            raise VocabError(f"list {self.name!r}: terms must be a sequence of strings, not "
                             f"{(odd or [self.terms])[0]!r:.40}.")
        long = [t for t in terms if len(t) > MAX_TERM_CHARS]
        if long:
            warnings.warn(f"list {self.name!r}: {len(long)} term(s) longer than {MAX_TERM_CHARS} characters skipped "
                          f"(e.g. {long[0][:40]!r}...).")
            terms = tuple(t for t in terms if len(t) <= MAX_TERM_CHARS)
        object.__setattr__(self, "terms", terms)

    @property
    def labels(self) -> List[str]:
        """The phrases scored for this list, in the form they take in a prompt, less any that hold a banned word."""
        return self.ban.keep(label_forms(self.role, self.terms))


@dataclass(frozen=True)
class Vocabulary:
    """Ordered term lists. ``pool`` feeds fast/best, roles feed classic, ``negative`` feeds negative mode.

    ``ban`` applies to every list (see :mod:`.ban`), whichever way the vocabulary was built.
    """

    lists: Tuple[TermList, ...]
    source: str = ""
    ban: Ban = Ban()
    _index: Dict[str, TermList] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        names = [tl.name for tl in self.lists]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise VocabError(f"vocabulary {self.source} has more than one list named {', '.join(duplicated)}.")
        if self.ban:
            object.__setattr__(self, "lists", tuple(
                replace(tl, terms=tuple(t for t in tl.terms if not self.ban.hits(t)), ban=self.ban)
                for tl in self.lists))
        object.__setattr__(self, "_index", {tl.name: tl for tl in self.lists})

    def __getitem__(self, name: str) -> TermList:
        return self._index[name]

    @property
    def names(self) -> List[str]:
        return [tl.name for tl in self.lists]

    def by_role(self, role: str) -> List[TermList]:
        return [tl for tl in self.lists if tl.role == role]

    @property
    def pool(self) -> List[TermList]:
        return [tl for tl in self.lists if tl.role != "negative"]

    @property
    def negative_pool(self) -> List[TermList]:
        """What negative mode picks from: flavor lists (ranked least similar first) and negative lists."""
        return [tl for tl in self.lists if tl.role in ("flavor", "negative")]

    @property
    def style(self) -> List[TermList]:
        return [tl for tl in self.lists if tl.style and tl.role != "negative"]

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str) -> "Vocabulary":
        """A folder with a manifest.json, or the reference's layout (artists/flavors/mediums/movements/negative)."""
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            raise VocabError(f"vocabulary folder not found: {folder}")
        manifest_path = os.path.join(folder, MANIFEST)
        if os.path.isfile(manifest_path):
            entries = _read_manifest(manifest_path)
        elif all(os.path.isfile(os.path.join(folder, e["file"])) for e in _REFERENCE_LAYOUT if "file" in e):
            entries = _REFERENCE_LAYOUT
        else:
            raise VocabError(f"{folder} has no {MANIFEST} and is not a clip-interrogator data folder "
                             f"(artists.txt, flavors.txt, mediums.txt, movements.txt, negative.txt).")
        where = manifest_path if entries is not _REFERENCE_LAYOUT else folder
        return cls(tuple(_term_list(folder, e, f"{where}, list {i + 1}") for i, e in enumerate(entries)),
                   source=folder)

    @classmethod
    def builtin(cls) -> "Vocabulary":
        """The lists written for this project, shipped in the pack's vocab/ folder."""
        return cls.from_folder(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vocab"))

    @classmethod
    def reference(cls) -> "Vocabulary":
        """The installed ``clip-interrogator`` package's own lists, read in place (never copied here)."""
        spec = importlib.util.find_spec("clip_interrogator")
        if spec is None or not spec.origin:
            raise VocabError("the 'reference' vocabulary needs the clip-interrogator package: "
                             "pip install clip-interrogator==0.6.0")
        return cls.from_folder(os.path.join(os.path.dirname(spec.origin), "data"))

    def with_user_lists(self, folder: str) -> "Vocabulary":
        """Add a user's folder: a .txt named like an existing list extends it; any other .txt is a new flavor list.

        A folder with its own manifest.json declares roles explicitly instead.
        """
        if not folder or not os.path.isdir(folder):
            return self
        if os.path.isfile(os.path.join(folder, MANIFEST)):
            extra = Vocabulary.from_folder(folder).lists
        else:
            extra = tuple(TermList(os.path.splitext(f)[0], "flavor", read_terms(os.path.join(folder, f)))
                          for f in sorted(os.listdir(folder)) if f.lower().endswith(".txt"))
        lists = list(self.lists)
        for user_list in extra:
            if user_list.name in self._index:
                i = self.names.index(user_list.name)
                lists[i] = replace(lists[i], terms=tuple(dict.fromkeys(lists[i].terms + user_list.terms)))
            else:
                lists.append(user_list)
        return Vocabulary(tuple(lists), source=f"{self.source} + {folder}", ban=self.ban)

    def without(self, names: Iterable[str] = (), roles: Iterable[str] = ()) -> "Vocabulary":
        """Switch lists off by name or by role (e.g. roles=["artist"] for prompts without artist names)."""
        names, roles = set(names), set(roles)
        unknown = names - set(self.names)
        if unknown:
            raise VocabError(f"cannot switch off unknown list(s) {', '.join(sorted(unknown))}; "
                             f"known lists: {', '.join(self.names)}.")
        kept = tuple(tl for tl in self.lists if tl.name not in names and tl.role not in roles)
        return Vocabulary(kept, source=self.source, ban=self.ban)

    def banning(self, banned: Iterable[str]) -> "Vocabulary":
        """Add banned words or phrases (whole words, any case): no label that contains one is scored, and the
        engine cuts them out of captions and joined labels (see :mod:`.ban`). Bans add up."""
        ban = self.ban + Ban((banned,) if isinstance(banned, str) else tuple(banned))
        return self if ban == self.ban else Vocabulary(self.lists, source=self.source, ban=ban)


_ENTRY = '{"name": ..., "file": "terms.txt" (or "terms": [...]), "role": ...}'


def _read_manifest(path: str) -> Sequence[dict]:
    manifest = read_json(path, VocabError, f'a vocabulary manifest: {{"lists": [{_ENTRY}, ...]}}')
    return get(manifest, "lists", list, path, VocabError)


def _term_list(folder: str, entry: dict, where: str) -> TermList:
    """One manifest entry as a TermList; ``where`` names the entry in errors."""
    if not isinstance(entry, dict):
        raise VocabError(f"{where} is {json_kind(entry)}; each list must be an object: {_ENTRY}.")
    name = get(entry, "name", str, where, VocabError, default=None)
    role = get(entry, "role", str, where, VocabError, default="flavor")
    style = get(entry, "style", bool, where, VocabError, default=role != "negative")
    exhaustive = get(entry, "exhaustive", bool, where, VocabError, default=False)
    if role not in ROLES:  # before reading its file: a wrong role is the error to report
        raise VocabError(f"{where}: list {name!r} has role {role!r}; use one of {', '.join(ROLES)}.")
    if "terms" in entry:
        terms = get(entry, "terms", (list, tuple), where, VocabError)  # TermList checks its items
    elif "file" in entry:
        file = get(entry, "file", str, where, VocabError)
        terms = read_terms(inside(folder, file, f"{where}: file", VocabError))
        name = name or os.path.splitext(os.path.basename(file))[0]
    else:
        raise VocabError(f"{where} has neither 'file' nor 'terms'; each list is {_ENTRY}.")
    try:
        return TermList(name=name, role=role, terms=tuple(terms), style=style, exhaustive=exhaustive)
    except VocabError as error:
        raise VocabError(f"{where}: {error}") from None
