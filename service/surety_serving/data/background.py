"""Background prose for outlier exposure: dictionary definitions, WordNet glosses, Jargon File
entries and Python docstrings, none of them a fortune.

docs/models.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import ast
import gzip
import logging
import os
import platform
import re
import string
import sysconfig
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from surety_serving.data import doc_text, fortunes
from surety_serving.data.debian import (
    DebianError,
    download_packages,
    locked,
    read_stamp,
    repo_root,
)
from surety_serving.data.doc_text import TextSet, keep_paragraph, sample_paragraphs
from surety_serving.data.jsonl import cached_counts, write_manifest

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_ENV",
    "DEBIAN_SOURCES",
    "PYTHON_SOURCE",
    "default_cache_dir",
    "docstring_paragraphs",
    "gcide_articles",
    "gcide_passages",
    "gcide_root_passages",
    "jargon_passages",
    "jargon_root_passages",
    "keep_passage",
    "overlap_test",
    "prepare_background",
    "stdlib_dir",
    "stdlib_passages",
    "wordnet_glosses",
    "wordnet_root_passages",
]

CACHE_DIR_ENV = "SURETY_BACKGROUND_DIR"
MAX_PER_SOURCE = 2000
MAX_CHARS = 600
# Word runs this long shared with a held-out text mark a quotation the two have in common.
RUN_WORDS = 8
# Bump when extraction or sampling changes, so sets made the old way are rebuilt.
FORMAT_VERSION = 1

GCIDE_DICT = Path("usr/share/dictd/gcide.dict.dz")
GCIDE_INDEX = Path("usr/share/dictd/gcide.index")
WORDNET_DIR = Path("usr/share/wordnet")
WORDNET_DATA = ("data.noun", "data.verb", "data.adj", "data.adv")
JARGON_TEXT = Path("usr/share/doc/jargon-text/jargon.txt.gz")
PYTHON_SOURCE = "python-docstrings"
# Test suites quote odd inputs rather than explain anything, and installed packages are not
# the standard library.
STDLIB_SKIPPED = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BRACES = re.compile(r"\{([^{}]*)\}")
# What markup a parser leaves behind means it misread the passage: dropped, not repaired.
_LEFTOVER_MARKUP = re.compile(r"[\[\]{}\\]")
# Sense numbers, parts of speech (``n.``, ``v. t.``, ``a. & adv.``) and labels in parentheses
# (``(Zool.)``, ``(often capitalized)``) in front of a definition.
_LEADING_LABELS = re.compile(r"^(?:[\s,;:&.]|\d+\.|[a-z]{1,6}\.|\([^()]*\))+")

_GCIDE_METADATA = "00-database"
_DICTD_DIGITS = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
# A line that is only a bracket closes what it follows: a source tag (``[1913 Webster]``,
# ``[WordNet 1.5]``) or a usage label (``[Obs.]``).
_GCIDE_TAG_LINE = re.compile(r"^\s*\[[^\[\]]*\]\s*$")
# Quotations are indented deeper than the senses they illustrate.
_GCIDE_QUOTE_INDENT = 7
_GCIDE_SKIPPED_LABELS = ("Syn:", "Antonym:")
_GCIDE_LABEL = re.compile(r"^(?:Note|Usage):\s*")
# ``--Shak.``, ``--Sir W. Scott.``: the author of a quotation, after it.
_GCIDE_CITATION = re.compile(r"(?:^|\s)--[A-Z0-9].*$")
_GCIDE_ACCENTS = {
    "'": "\N{COMBINING ACUTE ACCENT}",
    "`": "\N{COMBINING GRAVE ACCENT}",
    '"': "\N{COMBINING DIAERESIS}",
    "^": "\N{COMBINING CIRCUMFLEX ACCENT}",
    "~": "\N{COMBINING TILDE}",
    ",": "\N{COMBINING CEDILLA}",
    "=": "\N{COMBINING MACRON}",
    ".": "\N{COMBINING DOT ABOVE}",
}
# ``['e]`` is é; a breve follows its letter: ``[a^]`` is ă.
_GCIDE_ACCENTED = re.compile(r"\[([`'\"^~,=.])([A-Za-z])\]|\[([A-Za-z])\^\]")
_GCIDE_NAMED = {
    "ae": "æ",
    "AE": "Æ",
    "oe": "œ",
    "OE": "Œ",
    "deg": "°",
    "sect": "§",
    "pounds": "£",
}
_GCIDE_ENTITY = re.compile(r"\[(" + "|".join(_GCIDE_NAMED) + r")\]")
_GCIDE_GROUP = re.compile(r"\[[^\[\]]*\]")
_GCIDE_UNKNOWN_ENTITY = re.compile(r"(?<=\w)\[[^\[\]\s]{1,8}\]|\[[^\[\]\s]{1,8}\](?=\w)")

_JARGON_HEADWORD = re.compile(r"^ {3}:[^:\s][^:]*:(?:\s|$)")
_JARGON_INDENT = "   "

_NOT_PROSE_LINE = re.compile(r"\s|>>>|\.\.|[-=~^*+#_ ]{3,}$")
_SIGNATURE = re.compile(r"\)\s*->")


# --------------------------------------------------------------------------------------------
# Passages


def keep_passage(text: str) -> str | None:
    """The passage with whitespace collapsed, or None when it is not prose of fortune-cookie
    size: the rule of :func:`~surety_serving.data.doc_text.keep_paragraph`, with passages over
    :data:`MAX_CHARS` dropped instead of cut (a cut passage ends mid-sentence, a mark of its own
    that a detector could learn)."""
    if len(" ".join(text.split())) > MAX_CHARS:
        return None
    return keep_paragraph(text)


def _markup_free(text: str) -> str | None:
    """``{cross references}`` resolved to their text, then :func:`keep_passage`; None when
    other markup is left."""
    text = _BRACES.sub(r"\1", text)
    return None if _LEFTOVER_MARKUP.search(text) else keep_passage(text)


# --------------------------------------------------------------------------------------------
# GCIDE (dictd format)


def _dictd_number(field: str) -> int:
    value = 0
    for digit in field:
        value = value * 64 + _DICTD_DIGITS.index(digit)
    return value


def gcide_articles(dictionary: bytes, index: str) -> list[str]:
    """The articles of a dictd database (its uncompressed ``.dict`` and its ``.index``), in
    file order, each once however many headwords point at it; dictd's own metadata entries
    (``00-database-*``) are left out."""
    spans = set()
    for line in index.splitlines():
        headword, offset, length = line.split("\t")
        if not headword.startswith(_GCIDE_METADATA):
            spans.add((_dictd_number(offset), _dictd_number(length)))
    return [fortunes.decode_entry(dictionary[start : start + n]) for start, n in sorted(spans)]


def _gcide_units(article: str) -> Iterator[tuple[list[str], str]]:
    """The article's blocks, each with the tag line that closed it ("" for a blank line)."""
    lines: list[str] = []
    for line in article.splitlines():
        closing = _GCIDE_TAG_LINE.match(line)
        if line.strip() and not closing:
            lines.append(line)
            continue
        if lines:
            yield lines, line.strip()
        lines = []
    if lines:
        yield lines, ""


def _gcide_entities(text: str) -> str:
    text = _GCIDE_ACCENTED.sub(_accented, text)
    text = _GCIDE_ENTITY.sub(lambda m: _GCIDE_NAMED[m[1]], text)
    # Any other entity inside a word becomes markup, which drops the passage unless the word
    # lies in an etymology or a pronunciation that goes anyway.
    return _GCIDE_UNKNOWN_ENTITY.sub("\\\\", text)


def _accented(match: re.Match[str]) -> str:
    if match[3] is not None:
        return unicodedata.normalize("NFC", match[3] + "\N{COMBINING BREVE}")
    return unicodedata.normalize("NFC", match[2] + _GCIDE_ACCENTS[match[1]])


def _without_groups(text: str) -> str:
    """``text`` without its bracketed groups, nested ones included."""
    while (shorter := _GCIDE_GROUP.sub("", text)) != text:
        text = shorter
    return text


def gcide_passages(article: str) -> list[str]:
    """One passage per definition, note and literary quotation of a GCIDE article.

    The headword, its pronunciation and part of speech, bracketed etymologies and labels,
    sense numbers and the authors of quotations are dropped; synonym lists are skipped, and so
    is what GCIDE took from WordNet, a source of its own: the blocks tagged ``[WordNet ...]``,
    and whole articles whose tags name WordNet and never Webster. An article whose first line
    has no ``\\pronunciation\\`` is not an entry.
    """
    units = list(_gcide_units(article))
    tags = " ".join(tag for _, tag in units)
    if "\\" not in article.partition("\n")[0] or ("WordNet" in tags and "Webster" not in tags):
        return []
    passages = []
    for number, (lines, tag) in enumerate(units):
        text = " ".join(line.strip() for line in lines)
        if "WordNet" in tag or text.startswith(_GCIDE_SKIPPED_LABELS):
            continue
        if number == 0:
            text = text[text.rindex("\\") + 1 :]
        text = _without_groups(_gcide_entities(text))
        if len(lines[0]) - len(lines[0].lstrip()) < _GCIDE_QUOTE_INDENT:
            text = _LEADING_LABELS.sub("", _GCIDE_LABEL.sub("", text))
        if (passage := _markup_free(_GCIDE_CITATION.sub("", text))) is not None:
            passages.append(passage)
    return passages


def gcide_root_passages(root: Path) -> list[str]:
    """Passages of every article of the GCIDE dictd database under ``root``."""
    dictionary = gzip.decompress((root / GCIDE_DICT).read_bytes())
    index = (root / GCIDE_INDEX).read_text(encoding="utf-8")
    return [p for article in gcide_articles(dictionary, index) for p in gcide_passages(article)]


# --------------------------------------------------------------------------------------------
# WordNet


def wordnet_glosses(data: str) -> list[str]:
    """The glosses (definition and examples, after `` | ``) of a WordNet ``data.*`` file that
    are passages; the licence at the top is on lines that start with a space."""
    glosses = (
        line.partition(" | ")[2]
        for line in data.splitlines()
        if not line.startswith(" ") and " | " in line
    )
    return [passage for gloss in glosses if (passage := keep_passage(gloss)) is not None]


def wordnet_root_passages(root: Path) -> list[str]:
    """Glosses of every part of speech of the WordNet database under ``root``."""
    return [
        gloss
        for name in WORDNET_DATA
        for gloss in wordnet_glosses((root / WORDNET_DIR / name).read_text(encoding="utf-8"))
    ]


# --------------------------------------------------------------------------------------------
# The Jargon File


def jargon_passages(text: str) -> list[str]:
    """One passage per paragraph (a sense, or the running text) of each lexicon entry of the
    Jargon File's plain-text rendering.

    Entries start at their headword line (``   :cruft: /kruhft/``); text before the first
    entry (the introduction) and from the next unindented heading on (the appendices) is not
    lexicon. Paragraphs indented deeper than the text (quotations, code, pictures) are skipped,
    and so are the paragraphs they leave behind: one that starts in lower case (the rest of a
    sentence around a quotation) or with a dash (the quotation's author). Bracketed
    etymologies, sense numbers and parts of speech are dropped.
    """
    passages = []
    in_lexicon = False
    for block in _BLANK_LINE.split(text):
        lines = block.splitlines()
        if lines and _JARGON_HEADWORD.match(lines[0]):
            in_lexicon = True
            lines = lines[1:]
        if not lines:
            continue
        if not lines[0].startswith(_JARGON_INDENT):
            in_lexicon = False
        if not in_lexicon or any(line.startswith(_JARGON_INDENT + " ") for line in lines):
            continue
        paragraph = " ".join(line.strip() for line in lines)
        if paragraph[0].islower() or paragraph.startswith("—"):
            continue
        paragraph = _LEADING_LABELS.sub("", _without_groups(paragraph))
        if (passage := _markup_free(paragraph)) is not None:
            passages.append(passage)
    return passages


def jargon_root_passages(root: Path) -> list[str]:
    """Passages of the Jargon File under ``root``."""
    return jargon_passages(gzip.decompress((root / JARGON_TEXT).read_bytes()).decode("utf-8"))


DEBIAN_SOURCES: dict[str, TextSet] = {
    "gcide": TextSet("dict-gcide", GCIDE_DICT.parent, gcide_root_passages),
    "wordnet": TextSet("wordnet-base", WORDNET_DIR, wordnet_root_passages),
    "jargon": TextSet("jargon-text", JARGON_TEXT.parent, jargon_root_passages),
}


# --------------------------------------------------------------------------------------------
# Python docstrings


def docstring_paragraphs(docstring: str) -> list[str]:
    """The prose paragraphs of a cleaned docstring (blank-line separated), as passages.

    A paragraph with an indented line (a literal block, an argument list's descriptions), a
    doctest prompt, a reST directive, a rule or table border, or a signature (``f(x) -> y``)
    is not prose.
    """
    paragraphs = []
    for block in _BLANK_LINE.split(docstring):
        lines = block.splitlines()
        if _SIGNATURE.search(block) or any(_NOT_PROSE_LINE.match(line) for line in lines):
            continue
        if (passage := keep_passage(block)) is not None:
            paragraphs.append(passage)
    return paragraphs


def _docstrings(source: bytes) -> Iterator[str]:
    with warnings.catch_warnings():
        # Old escapes in string literals warn at parse time; the docstrings are fine.
        warnings.simplefilter("ignore", SyntaxWarning)
        tree = ast.parse(source)
    for node in ast.walk(tree):
        documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, documented) and (docstring := ast.get_docstring(node)):
            yield docstring


def stdlib_dir() -> Path:
    """The source folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_passages(stdlib: Path) -> list[str]:
    """Docstring paragraphs of every module under ``stdlib`` (parsed, never imported), test
    suites and installed packages left out; a file this interpreter cannot parse is
    skipped."""
    passages: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        if STDLIB_SKIPPED.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            docstrings = list(_docstrings(path.read_bytes()))
        except SyntaxError:
            log.info(f"skipped {path}: not valid Python {platform.python_version()}")
            continue
        passages.extend(p for docstring in docstrings for p in docstring_paragraphs(docstring))
    return passages


# --------------------------------------------------------------------------------------------
# Exclusion


def _word_runs(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {" ".join(words[i : i + RUN_WORDS]) for i in range(len(words) - RUN_WORDS + 1)}


def overlap_test(held_out: Iterable[str]) -> Callable[[str], bool]:
    """Whether a passage is one of the ``held_out`` texts or shares a run of :data:`RUN_WORDS`
    words with one (a quotation both hold), case and punctuation aside."""
    held = set(held_out)
    runs = set().union(*map(_word_runs, held))
    return lambda passage: passage in held or not runs.isdisjoint(_word_runs(passage))


# --------------------------------------------------------------------------------------------
# The whole preparation


def default_cache_dir() -> Path:
    """``$SURETY_BACKGROUND_DIR``, else ``data/background`` under the repository (or the
    cwd)."""
    if override := os.environ.get(CACHE_DIR_ENV):
        return Path(override)
    return (repo_root() or Path.cwd()) / "data" / "background"


def prepare_background(
    cache_dir: Path | None = None,
    *,
    seed: int = 0,
    fortunes_dir: Path | None = None,
    doc_text_dir: Path | None = None,
) -> dict[str, Path]:
    """Download (once) the packages of :data:`DEBIAN_SOURCES`, extract the passages of every
    source, sample them and write ``<cache_dir>/sets/seed-<seed>/background.jsonl``
    (``{"text", "label": <source>}`` lines, source by source) and ``manifest.json`` (once);
    returns that file as ``{"background": path}``.

    Held out, so that the background never overlaps a set that tunes or evaluates OOD
    detection: every topic of the fortunes corpus (``fortunes_dir``, default
    ``$SURETY_FORTUNES_DIR`` or ``data/fortunes``) and every paragraph doc_text's sets draw
    from (``doc_text_dir``, default ``$SURETY_DOC_TEXT_DIR`` or ``data/debian-docs``). A
    second call with the same parameters returns without downloading or extracting.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fortunes_dir = fortunes_dir if fortunes_dir is not None else fortunes.default_cache_dir()
    doc_text_dir = doc_text_dir if doc_text_dir is not None else doc_text.default_cache_dir()
    with locked(cache_dir):
        root = download_packages(
            cache_dir,
            [source.package for source in DEBIAN_SOURCES.values()],
            [source.provides for source in DEBIAN_SOURCES.values()],
        )
        with locked(fortunes_dir):
            topic_dir = fortunes.download_corpus(fortunes_dir)
            fortunes_stamp = read_stamp(fortunes_dir)
        with locked(doc_text_dir):
            doc_root = doc_text.download_sets(doc_text_dir)
            doc_text_stamp = read_stamp(doc_text_dir)
        parameters = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "cap": MAX_PER_SOURCE,
            "sources": {
                **{name: source.package for name, source in DEBIAN_SOURCES.items()},
                PYTHON_SOURCE: f"python {platform.python_version()}",
            },
            "corpus": read_stamp(cache_dir),
            "fortunes_corpus": fortunes_stamp,
            "doc_text_corpus": doc_text_stamp,
        }
        out = cache_dir / "sets" / f"seed-{seed}"
        path = out / "background.jsonl"
        if cached_counts(out, parameters, [path]) is not None:
            log.info(f"background cached in {out}")
            return {"background": path}

        topics = (
            *fortunes.IN_DISTRIBUTION_TOPICS,
            *fortunes.OOD_TOPICS,
            *fortunes.OOD_VALIDATION_TOPICS,
        )
        overlaps = overlap_test(
            [
                *(t for texts in fortunes.load_topics(topic_dir, topics).values() for t in texts),
                *(p for text_set in doc_text.SETS.values() for p in text_set.extract(doc_root)),
            ]
        )
        extractors: dict[str, Callable[[], list[str]]] = {
            **{name: partial(source.extract, root) for name, source in DEBIAN_SOURCES.items()},
            PYTHON_SOURCE: partial(stdlib_passages, stdlib_dir()),
        }
        examples: list[fortunes.Example] = []
        counts: dict[str, dict[str, int]] = {}
        # A passage two sources share stays with the first.
        taken: set[str] = set()
        for name, extract in extractors.items():
            log.info(f"extracting {name}")
            passages = extract()
            held_out = {passage for passage in passages if overlaps(passage)}
            sample = sample_paragraphs(
                passages, seed=seed, cap=MAX_PER_SOURCE, exclude=held_out | taken
            )
            if not sample:
                raise DebianError(f"{name} yielded no passages")
            taken.update(passages)
            examples += (fortunes.Example(passage, name) for passage in sample)
            counts[name] = {
                "passages": len(passages),
                "held_out": len(held_out),
                "sampled": len(sample),
            }
        fortunes.write_jsonl(path, examples)
        write_manifest(out, parameters, counts)
        totals = ", ".join(f"{name} {c['sampled']}" for name, c in counts.items())
        log.info(f"background written to {path}: {totals}")
        return {"background": path}
