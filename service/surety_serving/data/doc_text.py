"""Prose from Debian documentation, as far-out-of-distribution sets for the fortunes.

docs/models.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import string
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from surety_serving.data import fortunes
from surety_serving.data.debian import (
    DebianError,
    download_packages,
    locked,
    read_stamp,
    repo_root,
)
from surety_serving.data.jsonl import cached_counts, write_manifest

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_ENV",
    "SETS",
    "TextSet",
    "default_cache_dir",
    "download_sets",
    "keep_paragraph",
    "manpage_paragraphs",
    "policy_paragraphs",
    "prepare_doc_text",
    "roff_paragraphs",
    "roff_text",
    "sample_paragraphs",
    "text_paragraphs",
]

CACHE_DIR_ENV = "SURETY_DOC_TEXT_DIR"
MAX_PER_SET = 600
MIN_CHARS = 40
MIN_WORDS = 6
MAX_CHARS = 1000
# Bump when extraction or sampling changes, so sets made the old way are rebuilt.
FORMAT_VERSION = 1

MAN_SUBDIR = Path("usr/share/man")
#: The German man pages (package manpages-de): another language, the second far evaluation set.
GERMAN_MAN_SUBDIR = MAN_SUBDIR / "de"
POLICY_TEXT = Path("usr/share/doc/debian-policy/policy.txt.gz")

# Their arguments are text in one font (joined by spaces) or alternating between two fonts
# (joined without spaces: ``.BR open (2),`` is "open(2),").
_FONT_MACROS = frozenset({"B", "I", "SM", "SB"})
_ALTERNATING_FONT_MACROS = frozenset({"BR", "IR", "RB", "RI", "BI", "IB"})
# No-fill blocks: code examples and tables, not prose.
_VERBATIM_START = frozenset({"nf", "EX", "TS"})
_VERBATIM_END = frozenset({"fi", "EE", "TE"})
_SKIPPED_SECTIONS = frozenset({"NAME", "SYNOPSIS", "SEE ALSO"})

_SPECIAL_CHARACTERS = {
    "em": "—",
    "en": "–",
    "hy": "-",
    "mi": "-",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "rs": "\\",
    "ti": "~",
}
_SINGLE_ESCAPES = {"-": "-", "e": "\\", "\\": "\\", ".": ".", " ": " ", "~": " ", "0": " "}
_ESCAPE = re.compile(
    r"""\\(?:
        [fn*](?:\[[^\]]*\]|\(..|.)  # font, number register, string: dropped
      | \((?P<short>..)              # special character \(xx
      | \[(?P<long>[^\]]*)\]         # special character \[name]
      | s[-+]?\d                     # type size
      | (?P<single>.)                # everything else: \- \e \& \| ...
      | $                            # a line continuation
    )""",
    re.VERBOSE,
)
_COMMENT = re.compile(r'\\".*')
# An escaped space (``\-n\ name``) does not separate arguments.
_ARGUMENT = re.compile(r'"((?:[^"]|"")*)"?|((?:\\.|\S)+)')
_RULE = re.compile(r"^\s*([=\-*~^#+_])\1{2,}\s*$")
_CONTENTS_ENTRY = re.compile(r"^\s*\*\s+\d+(?:\.\d+)*\.\s")
_FOOTNOTE_MARK = re.compile(r"\s*\[\d+\]")


# --------------------------------------------------------------------------------------------
# Paragraphs


def keep_paragraph(text: str) -> str | None:
    """The paragraph with whitespace collapsed and cut to :data:`MAX_CHARS`, or None when it is
    too short or has too few words of letters to be prose."""
    text = " ".join(text.split())
    words = sum(word.strip(string.punctuation + "“”‘’").isalpha() for word in text.split())
    if len(text) < MIN_CHARS or words < MIN_WORDS:
        return None
    if len(text) > MAX_CHARS:
        # At a word boundary, so that the cut leaves no half word behind.
        text = text[: MAX_CHARS + 1].rsplit(" ", 1)[0]
    return text


def _replace_escape(match: re.Match[str]) -> str:
    if (name := match["short"] or match["long"]) is not None:
        return _SPECIAL_CHARACTERS.get(name, "")
    if (single := match["single"]) is not None:
        return _SINGLE_ESCAPES.get(single, "")
    return ""


def roff_text(line: str) -> str:
    """One line of roff text with its escapes resolved (special characters) or dropped."""
    return _ESCAPE.sub(_replace_escape, _COMMENT.sub("", line))


def _request(line: str) -> tuple[str, list[str]]:
    name, _, rest = line[1:].strip().replace("\t", " ").partition(" ")
    arguments = [
        quoted.replace('""', '"') if quoted is not None else bare
        for quoted, bare in (m.groups() for m in _ARGUMENT.finditer(_COMMENT.sub("", rest)))
    ]
    return name, arguments


def roff_paragraphs(source: str) -> list[str]:
    """The prose paragraphs of a man page's roff source, filtered by :func:`keep_paragraph`.

    Every request (a line starting with ``.`` or ``'``) ends a paragraph, except the font
    macros, whose arguments are text. A page that is only a ``.so`` redirect yields nothing.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    section = ""
    verbatim = False

    def flush() -> None:
        kept = keep_paragraph(" ".join(current)) if section not in _SKIPPED_SECTIONS else None
        if kept is not None:
            paragraphs.append(kept)
        current.clear()

    for line in source.splitlines():
        if not line.startswith((".", "'")):
            if not line.strip():  # a blank line breaks paragraphs in roff too
                flush()
            elif not verbatim:
                current.append(roff_text(line))
            continue
        name, arguments = _request(line)
        if name in _FONT_MACROS or name in _ALTERNATING_FONT_MACROS:
            if not verbatim:
                joiner = " " if name in _FONT_MACROS else ""
                current.append(joiner.join(roff_text(a) for a in arguments))
            continue
        if name.startswith('\\"'):
            continue
        flush()
        if name == "SH":
            section = " ".join(roff_text(a) for a in arguments).upper()
        elif name in _VERBATIM_START:
            verbatim = True
        elif name in _VERBATIM_END:
            verbatim = False
    flush()
    return paragraphs


def text_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a plain-text document (blank-line separated), filtered by
    :func:`keep_paragraph`.

    Rule lines (``=====``), the headings they underline, table-of-contents entries
    (``* 4.2. Title``) and footnote marks (``[3]``) are dropped.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = block.splitlines()
        if lines and _CONTENTS_ENTRY.match(lines[0]):
            continue
        kept = []
        for index, line in enumerate(lines):
            underlined = index + 1 < len(lines) and _RULE.match(lines[index + 1])
            if not (_RULE.match(line) or underlined):
                kept.append(_FOOTNOTE_MARK.sub("", line))
        if (paragraph := keep_paragraph(" ".join(kept))) is not None:
            paragraphs.append(paragraph)
    return paragraphs


def manpage_paragraphs(root: Path, folder: Path = MAN_SUBDIR) -> list[str]:
    """Paragraphs of every man page in ``folder`` (``man*/*.gz``; default the English ones,
    ``usr/share/man``) under ``root``."""
    paragraphs: list[str] = []
    for page in sorted((root / folder).glob("man*/*.gz")):
        paragraphs.extend(
            roff_paragraphs(fortunes.decode_entry(gzip.decompress(page.read_bytes())))
        )
    return paragraphs


def policy_paragraphs(root: Path) -> list[str]:
    """Paragraphs of the Debian Policy Manual's plain-text rendering under ``root``."""
    return text_paragraphs(gzip.decompress((root / POLICY_TEXT).read_bytes()).decode("utf-8"))


@dataclass(frozen=True)
class TextSet:
    """Where a set's text comes from: a package, a folder it must ship, and an extractor."""

    package: str
    provides: Path
    extract: Callable[[Path], list[str]]


SETS: dict[str, TextSet] = {
    "manpages": TextSet("manpages", MAN_SUBDIR / "man7", manpage_paragraphs),
    "debian-policy": TextSet("debian-policy", POLICY_TEXT.parent, policy_paragraphs),
    "manpages-de": TextSet(
        "manpages-de",
        GERMAN_MAN_SUBDIR / "man1",
        partial(manpage_paragraphs, folder=GERMAN_MAN_SUBDIR),
    ),
}


def download_sets(cache_dir: Path) -> Path:
    """Fetch (once) and unpack the packages of :data:`SETS` under ``cache_dir``; returns the
    root they are unpacked in."""
    return download_packages(
        cache_dir,
        [text_set.package for text_set in SETS.values()],
        [text_set.provides for text_set in SETS.values()],
    )


def sample_paragraphs(
    paragraphs: Iterable[str],
    *,
    seed: int,
    cap: int = MAX_PER_SET,
    exclude: Collection[str] = frozenset(),
) -> list[str]:
    """At most ``cap`` distinct paragraphs not in ``exclude``, chosen deterministically for a
    seed (sorted first, so the input's order does not matter)."""
    unique = sorted(set(paragraphs).difference(exclude))
    order = np.random.default_rng(seed).permutation(len(unique))[:cap]
    return [unique[i] for i in order]


# --------------------------------------------------------------------------------------------
# The whole preparation


def default_cache_dir() -> Path:
    """``$SURETY_DOC_TEXT_DIR``, else ``data/debian-docs`` under the repository (or the cwd)."""
    if override := os.environ.get(CACHE_DIR_ENV):
        return Path(override)
    return (repo_root() or Path.cwd()) / "data" / "debian-docs"


def prepare_doc_text(
    cache_dir: Path | None = None,
    *,
    seed: int = 0,
    fortunes_dir: Path | None = None,
) -> dict[str, Path]:
    """Download (once) the packages of :data:`SETS`, extract and sample their paragraphs, and
    write ``<cache_dir>/sets/seed-<seed>/<set>.jsonl`` (``{"text", "label": <set>}`` lines)
    and ``manifest.json`` (once); returns the JSONL file of each set by name.

    ``fortunes_dir`` is the fortunes cache (default: ``$SURETY_FORTUNES_DIR`` or
    ``data/fortunes``), whose in-distribution entries are excluded. A second call with the
    same parameters returns without downloading.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fortunes_dir = fortunes_dir if fortunes_dir is not None else fortunes.default_cache_dir()
    with locked(cache_dir):
        root = download_sets(cache_dir)
        with locked(fortunes_dir):
            fortunes_topic_dir = fortunes.download_corpus(fortunes_dir)
            fortunes_stamp = read_stamp(fortunes_dir)
        parameters = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "cap": MAX_PER_SET,
            "sets": {name: text_set.package for name, text_set in SETS.items()},
            "corpus": read_stamp(cache_dir),
            "fortunes_corpus": fortunes_stamp,
        }
        out = cache_dir / "sets" / f"seed-{seed}"
        paths = {name: out / f"{name}.jsonl" for name in SETS}
        if cached_counts(out, parameters, paths.values()) is not None:
            log.info(f"sets cached in {out}")
            return paths

        in_distribution = fortunes.load_topics(fortunes_topic_dir, fortunes.IN_DISTRIBUTION_TOPICS)
        exclude = {text for texts in in_distribution.values() for text in texts}
        counts: dict[str, dict[str, int]] = {}
        for name, text_set in SETS.items():
            paragraphs = text_set.extract(root)
            sample = sample_paragraphs(paragraphs, seed=seed, exclude=exclude)
            if not sample:
                raise DebianError(f"{text_set.package} yielded no paragraphs")
            fortunes.write_jsonl(paths[name], (fortunes.Example(p, name) for p in sample))
            counts[name] = {"paragraphs": len(paragraphs), "sampled": len(sample)}
        write_manifest(out, parameters, counts)
        totals = ", ".join(f"{name} {c['sampled']}" for name, c in counts.items())
        log.info(f"sets written to {out}: {totals}")
        return paths
