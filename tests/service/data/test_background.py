"""Background prose: each source's parser on small literal samples of its real format, the
exclusion of held-out texts, and the cached preparation (no network: the caches are made
here)."""

from __future__ import annotations

import gzip
import json
import logging
import string
from pathlib import Path

import pytest

from surety_serving.data import background, doc_text, fortunes
from surety_serving.data.background import (
    docstring_paragraphs,
    gcide_articles,
    gcide_passages,
    jargon_passages,
    keep_passage,
    overlap_test,
    prepare_background,
    stdlib_passages,
    wordnet_glosses,
)
from surety_serving.data.debian import STAMP_NAME, DebianError
from surety_serving.data.fortunes import read_jsonl

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------------------------
# Passage size


def test_a_passage_has_fortune_cookie_size() -> None:
    assert keep_passage("Too short, if six words long.") is None
    assert keep_passage("  Every word in this\n sentence is made of letters. ") == (
        "Every word in this sentence is made of letters."
    )
    long = "abcdefghi " * 61
    assert keep_passage(long[: background.MAX_CHARS]) is not None
    assert keep_passage(long) is None  # dropped, not cut


# --------------------------------------------------------------------------------------------
# GCIDE

ABANDON = r"""Abandon \A*ban"don\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned} (-d[u^]nd); p. pr. & vb. n. {Abandoning}.] [OF.
   abandoner, F. abandonner. See {Ban}.]
   1. To cast or drive out; to banish; to expel; to reject.
      [Obs.]
      [1913 Webster]

            That he might . . . abandon them from him. --Udall.
      [1913 Webster]

   2. To give up absolutely; to forsake entirely; to renounce
      utterly; to relinquish all connection with or concern on.
      [1913 Webster]

            Hope was overthrown, yet could not be abandoned.
                                                  --I. Taylor.
      [1913 Webster]

   Syn: To give up; yield; forego; cede; surrender; resign;
        abdicate; quit; relinquish; renounce; desert; forsake.

   Note: The European skylark, or lark of the poets ({Alauda
         arvensis}), is noted for its clear and sweet song.
         [1913 Webster]

   3. the act of giving up a thing absolutely and finally, as
      WordNet has it in the gloss of the word.
      [WordNet 1.5]
"""

LAROID = r"""Laroid \La"roid\, a. [Larus + -oid.] (Zool.)
   Like or belonging to the Gull family ({Larid[ae]}), as the terns are.
   [1913 Webster]

   2. A sense with an entity nobody knows: caf[xx]e, which is left as it is.
      [1913 Webster]
"""

AIRDROME = r"""airdrome \air"drome`\ n.
   1. an airfield equipped with control tower and hangers as
      well as accommodations for passengers and cargo.

   Syn: airport, aerodrome
        [WordNet 1.5]
"""


def test_an_article_becomes_its_definitions_notes_and_quotations() -> None:
    assert gcide_passages(ABANDON) == [
        "To cast or drive out; to banish; to expel; to reject.",
        "That he might . . . abandon them from him.",
        "To give up absolutely; to forsake entirely; to renounce utterly; to relinquish all "
        "connection with or concern on.",
        "Hope was overthrown, yet could not be abandoned.",
        "The European skylark, or lark of the poets (Alauda arvensis), is noted for its clear "
        "and sweet song.",
    ]


def test_entities_are_resolved_and_an_unknown_one_drops_its_passage() -> None:
    assert gcide_passages(LAROID) == [
        "Like or belonging to the Gull family (Laridæ), as the terns are."
    ]


def test_an_article_taken_from_wordnet_is_skipped() -> None:
    assert gcide_passages(AIRDROME) == []


def _dictd_number(value: int) -> str:
    digits = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    encoded = ""
    while True:
        value, digit = divmod(value, 64)
        encoded = digits[digit] + encoded
        if not value:
            return encoded


def _dictd(articles: list[tuple[list[str], str]]) -> tuple[bytes, str]:
    """A dictd database (``.dict`` bytes, ``.index`` text) of articles with their headwords."""
    data = b""
    index = []
    for headwords, article in articles:
        raw = article.encode("utf-8")
        index += [f"{w}\t{_dictd_number(len(data))}\t{_dictd_number(len(raw))}" for w in headwords]
        data += raw + b"\n"
    return data, "\n".join(sorted(index)) + "\n"


def test_a_dictd_index_gives_each_article_once_without_metadata() -> None:
    dictionary, index = _dictd(
        [
            (["00-database-url"], "00-database-url\n   ftp://ftp.gnu.org/gnu/gcide\n"),
            (["Abandon", "abandon"], ABANDON),
            (["Laroid"], LAROID),
        ]
    )
    assert gcide_articles(dictionary, index) == [ABANDON, LAROID]


# --------------------------------------------------------------------------------------------
# WordNet

# The real files' lines: a licence, then synsets whose pointers come before the gloss; each
# line ends in two spaces.
WORDNET = "\n".join(
    [
        "  1 This software and database is being provided to you, the LICENSEE, by  ",
        "  2 Princeton University under the following license.  By obtaining, using  ",
        "00977301 04 n 01 strike 2 005 @ 00972621 n 0000 + 01123905 v 0101 | an attack that "
        'is intended to seize or inflict damage on an objective; "the strike began at dawn"  ',
        "00977214 04 n 01 swoop 1 002 @ 00976953 n 0000 + 01440028 v 0101 | a very rapid raid  ",
    ]
)


def test_wordnet_glosses_follow_the_bar() -> None:
    assert wordnet_glosses(WORDNET) == [
        'an attack that is intended to seize or inflict damage on an objective; "the strike '
        'began at dawn"'
    ]


# --------------------------------------------------------------------------------------------
# The Jargon File

JARGON = """\
                                The Jargon File

   This is the introduction, a paragraph of prose before the lexicon begins.

Glossary

   :cruft: /kruhft/

   [very common; back-formation from {crufty}]

   1. n. An unpleasant substance. The dust that gathers under your bed is
   cruft; the TMRC Dictionary noted that a broom only produces more.

   2. vt. [from hand cruft, pun on ‘hand craft’] To write assembler code for
   something normally (and better) done by a compiler (see {hand-hacking}).

   :crunch: vi.

   To process, usually in a time-consuming or complicated way, as in this:

     “FORTRAN programs do mostly number-crunching, and so do the others.”

   which is said of programs that crunch numbers all night long and more.

   — The Great Quux, quoted in the file for the sake of this example

Appendix A. Hacker Folklore

   The Meaning of ‘Hack’ is a story in the appendix, not a lexicon entry.
"""


def test_jargon_entries_become_their_paragraphs() -> None:
    assert jargon_passages(JARGON) == [
        "An unpleasant substance. The dust that gathers under your bed is cruft; the TMRC "
        "Dictionary noted that a broom only produces more.",
        "To write assembler code for something normally (and better) done by a compiler (see "
        "hand-hacking).",
        "To process, usually in a time-consuming or complicated way, as in this:",
    ]


# --------------------------------------------------------------------------------------------
# Python docstrings

DOCSTRING = """Return the hash value of this hashing object, as a number.

>>> h = sha256(b"data and more words in it, all of them")

Arguments:
    data -- the bytes to hash, which may be of any length at all

digest(data, more, words, here, and, there) -> int, the signature of the call

==========  ======================================
.. versionadded:: 3.2 of the language and its library

Any exceptions raised within a task
will cancel all the remaining tasks."""


def test_a_docstring_keeps_its_prose_paragraphs() -> None:
    assert docstring_paragraphs(DOCSTRING) == [
        "Return the hash value of this hashing object, as a number.",
        "Any exceptions raised within a task will cancel all the remaining tasks.",
    ]


MODULE = '''"""A module docstring of the standard library, long enough to be a passage."""

raise SystemExit("parsed, never imported")


class Thing:
    """A class docstring of the standard library, long enough to be a passage."""

    async def run(self) -> None:
        """A method docstring of the standard library, long enough to be a passage."""
'''


def _stdlib(folder: Path) -> Path:
    """A standard library with one module, a test suite, an installed package and a file in
    another Python's syntax."""
    for relative, source in {
        "mod.py": MODULE,
        "test/test_mod.py": '"""A docstring of a test module, which is not a passage here."""',
        "site-packages/pkg.py": '"""A docstring of an installed package, which is not one."""',
        "py2.py": 'print "a statement of Python 2, which this interpreter cannot parse"',
    }.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(source, encoding="utf-8")
    return folder


def test_the_standard_library_is_parsed_not_imported(tmp_path: Path) -> None:
    assert stdlib_passages(_stdlib(tmp_path)) == [
        f"A {kind} docstring of the standard library, long enough to be a passage."
        for kind in ("module", "class", "method")
    ]


# --------------------------------------------------------------------------------------------
# Exclusion


def test_a_text_or_a_run_of_words_shared_with_a_held_out_text_overlaps() -> None:
    overlaps = overlap_test(["It is a far, far better thing that I do, than I have ever done."])
    assert overlaps("It is a far, far better thing that I do, than I have ever done.")
    assert overlaps("He said: it is a FAR far better thing that I do now.")  # eight words
    assert not overlaps("It is a far, far better thing to rest.")  # seven words
    assert not overlaps("Something else entirely, with no words in common at all.")


# --------------------------------------------------------------------------------------------
# The cached preparation

IN_FORTUNES = "Hope was overthrown, yet could not be abandoned."  # a GCIDE quotation above
IN_POLICY = "To process, usually in a time-consuming or complicated way, as in this:"
GLOSSES = [f"a gloss of the noun number {n}, which says what the noun means" for n in range(30)]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _stamp(cache: Path, name: str) -> None:
    (cache / STAMP_NAME).write_text(json.dumps({"packages": [name]}), encoding="utf-8")


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Unpacked, stamped package caches (as if downloaded) for the background, the fortunes
    and doc_text, and a standard library of one module."""
    root = tmp_path / "background" / "root"
    dictionary, index = _dictd([(["Abandon"], ABANDON), (["Laroid"], LAROID)])
    _write(root / background.GCIDE_DICT, gzip.compress(dictionary))
    _write(root / background.GCIDE_INDEX, index.encode())
    lines = [f"0000{n:04d} 04 n 01 word 0 000 | {gloss}" for n, gloss in enumerate(GLOSSES)]
    for name in background.WORDNET_DATA:
        _write(root / background.WORDNET_DIR / name, "\n".join(lines).encode())
    _write(root / background.JARGON_TEXT, gzip.compress(JARGON.encode()))
    _stamp(tmp_path / "background", "background")

    topic_dir = tmp_path / "fortunes" / "root" / fortunes.TOPIC_SUBDIR
    topic_dir.mkdir(parents=True)
    topics = (*fortunes.IN_DISTRIBUTION_TOPICS, *fortunes.OOD_TOPICS)
    for topic in topics:
        (topic_dir / topic).write_text(f"{topic} entry\n", encoding="utf-8")
    for topic in fortunes.OOD_VALIDATION_TOPICS:  # held out even from validation topics
        (topic_dir / topic).write_text(f"{topic} entry\n%\n{IN_FORTUNES}\n", encoding="utf-8")
    _stamp(tmp_path / "fortunes", "fortunes")

    docs_root = tmp_path / "docs" / "root"
    (docs_root / doc_text.MAN_SUBDIR / "man7").mkdir(parents=True)
    (docs_root / doc_text.GERMAN_MAN_SUBDIR / "man1").mkdir(parents=True)
    _write(docs_root / doc_text.POLICY_TEXT, gzip.compress(IN_POLICY.encode()))
    _stamp(tmp_path / "docs", "docs")

    stdlib = _stdlib(tmp_path / "stdlib")
    # Also a WordNet gloss: it stays with WordNet, the first source that has it.
    (stdlib / "gloss.py").write_text(f'"""{GLOSSES[0]}"""', encoding="utf-8")
    monkeypatch.setattr(background, "stdlib_dir", lambda: stdlib)
    monkeypatch.setattr("shutil.which", lambda _: None)  # any download attempt would fail
    return {
        "cache": tmp_path / "background",
        "fortunes_dir": tmp_path / "fortunes",
        "doc_text_dir": tmp_path / "docs",
    }


def _prepare(caches: dict[str, Path], seed: int) -> Path:
    return prepare_background(
        caches["cache"],
        seed=seed,
        fortunes_dir=caches["fortunes_dir"],
        doc_text_dir=caches["doc_text_dir"],
    )["background"]


def test_prepare_writes_the_background_once_without_downloading(
    caches: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(background, "MAX_PER_SOURCE", 20)
    caplog.set_level(logging.INFO, logger="surety_serving.data")
    path = _prepare(caches, seed=2)
    assert path == caches["cache"] / "sets" / "seed-2" / "background.jsonl"
    examples = read_jsonl(path)
    texts = {e.text for e in examples}
    assert IN_FORTUNES not in texts
    assert IN_POLICY not in texts
    by_source = {
        name: sorted(e.text for e in examples if e.label == name)
        for name in ("gcide", "wordnet", "jargon", "python-docstrings")
    }
    assert by_source["gcide"] == sorted(
        [*(p for p in gcide_passages(ABANDON) if p != IN_FORTUNES), *gcide_passages(LAROID)]
    )
    assert len(by_source["wordnet"]) == 20 and set(by_source["wordnet"]) < set(GLOSSES)
    assert len(by_source["jargon"]) == 2
    assert by_source["python-docstrings"] == sorted(
        f"A {kind} docstring of the standard library, long enough to be a passage."
        for kind in ("module", "class", "method")
    )
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 2
    assert manifest["parameters"]["doc_text_corpus"] == {"packages": ["docs"]}
    assert manifest["counts"]["gcide"] == {"passages": 6, "held_out": 1, "sampled": 5}
    assert manifest["counts"]["wordnet"] == {"passages": 120, "held_out": 0, "sampled": 20}

    stamp = path.stat().st_mtime_ns
    assert _prepare(caches, seed=2) == path
    assert path.stat().st_mtime_ns == stamp
    assert caplog.messages[-1].startswith("background cached")

    other = read_jsonl(_prepare(caches, seed=3))
    assert [e.text for e in other] != [e.text for e in examples]
    assert {e.text for e in other if e.label == "gcide"} == set(by_source["gcide"])


def test_without_apt_the_error_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(DebianError) as error:
        prepare_background(tmp_path / "empty")
    assert "'apt-get' not found" in str(error.value)
    assert "dict-gcide" in str(error.value)
