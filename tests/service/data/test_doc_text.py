"""Debian documentation as OOD text: roff and plain-text conversion on small hand-written
samples, the seeded sampling, and the cached preparation (no network: the caches are made
here)."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from surety_serving.data import doc_text, fortunes
from surety_serving.data.debian import STAMP_NAME
from surety_serving.data.doc_text import (
    keep_paragraph,
    prepare_doc_text,
    roff_paragraphs,
    roff_text,
    sample_paragraphs,
    text_paragraphs,
)
from surety_serving.data.fortunes import read_jsonl

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------------------------
# Paragraph filter

LONG_ENOUGH = "Every word in this sentence is made of letters only."


def test_a_paragraph_needs_forty_characters_and_six_words() -> None:
    assert keep_paragraph("  Short,\n but   six words long here.") is None
    assert keep_paragraph("--foo=BAR -x 0x42 /usr/lib/x86_64 $HOME ${PATH} a=b c") is None
    assert keep_paragraph(f"  {LONG_ENOUGH}\n\t") == LONG_ENOUGH


def test_a_long_paragraph_is_cut_at_a_word_boundary() -> None:
    text = keep_paragraph("abcdefghi " * 150)
    assert text is not None
    assert len(text) <= doc_text.MAX_CHARS
    assert text.endswith("abcdefghi")


# --------------------------------------------------------------------------------------------
# roff


def test_escapes_are_resolved_or_dropped() -> None:
    line = r"\fBbold\fR \fIital\fP \f(CWcw\f[] a\-b \(em x\(aqs \&.dot \e \(xx\[yy]\*(zz\*q"
    assert roff_text(line) == "bold ital cw a-b — x's .dot \\ "
    assert roff_text(r"text \" a comment") == "text "


PAGE = r""".\" Copyright comment, not text
.TH PIPE 7 2022-12-04 "Linux man-pages 6.03"
.SH NAME
pipe \- overview of pipes and FIFOs, a line of prose that is skipped
.SH SYNOPSIS
.nf
.B #include <unistd.h>
.BI "int pipe(int " pipefd [2]);
.fi
.SH DESCRIPTION
Pipes and FIFOs (also known as named pipes)
provide a unidirectional interprocess communication channel.
A pipe has a
.I read end
and a
.IR "write end" .
.PP
A pipe is created using
.BR pipe (2),
which creates a new pipe and returns two file descriptors.
.in +4n
.EX
int fd[2]; pipe(fd); write(fd[1], "the example text is code", 24);
.EE
.in

The only difference between pipes and FIFOs is the manner in which they are created.
'\" a comment made with the other control character
.TP
.BI \-n\  name
Name of the program file to profile, which is a bold option and its text.
.SH "SEE ALSO"
.BR fifo (7),
.BR open (2) and many other pages about pipes and files.
"""


def test_a_man_page_becomes_its_prose_paragraphs() -> None:
    assert roff_paragraphs(PAGE) == [
        "Pipes and FIFOs (also known as named pipes) provide a unidirectional interprocess "
        "communication channel. A pipe has a read end and a write end.",
        "A pipe is created using pipe(2), which creates a new pipe and returns two file "
        "descriptors.",
        "The only difference between pipes and FIFOs is the manner in which they are created.",
        "-n name Name of the program file to profile, which is a bold option and its text.",
    ]


def test_a_redirect_page_has_no_paragraphs() -> None:
    assert roff_paragraphs(".so man7/pipe.7\n") == []


# --------------------------------------------------------------------------------------------
# Plain text


def test_plain_text_drops_headings_rules_contents_and_footnote_marks() -> None:
    text = """Debian Policy Manual
********************

* 4.5. Copyright: "debian/copyright", a table of contents entry

4.5. Copyright: "debian/copyright" is a long heading of many words
=================================================================

Every package must be accompanied by a verbatim copy of its
distribution license(s) in the file.  [9]

----------------------------------------
"""
    assert text_paragraphs(text) == [
        "Every package must be accompanied by a verbatim copy of its distribution license(s) "
        "in the file."
    ]


# --------------------------------------------------------------------------------------------
# Sampling


def test_sampling_is_deterministic_deduplicated_and_capped() -> None:
    paragraphs = [f"paragraph {i}" for i in range(50)]
    first = sample_paragraphs(paragraphs + paragraphs[:10], seed=3, cap=20)
    assert len(first) == len(set(first)) == 20
    assert sample_paragraphs(list(reversed(paragraphs)), seed=3, cap=20) == first
    assert sample_paragraphs(paragraphs, seed=4, cap=20) != first
    assert sorted(sample_paragraphs(paragraphs, seed=3, cap=100)) == sorted(paragraphs)


def test_sampling_excludes_given_texts() -> None:
    sample = sample_paragraphs(["a", "b", "c"], seed=0, exclude={"b", "z"})
    assert sorted(sample) == ["a", "c"]


# --------------------------------------------------------------------------------------------
# The cached preparation


def _gzip(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


SHARED = "This sentence sits in the policy and also in the fortunes corpus."
GERMAN_PROSE = (
    "Listet Informationen über die Dateien auf, standardmäßig im aktuellen Verzeichnis, "
    "alphabetisch sortiert."
)
GERMAN_PAGE = rf""".TH LS 1 "Februar 2023" "GNU coreutils 9.1"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
{GERMAN_PROSE}
"""


@pytest.fixture
def caches(tmp_path: Path) -> tuple[Path, Path]:
    """Unpacked, stamped package caches (as if downloaded) for the docs and the fortunes."""
    docs = tmp_path / "docs"
    _gzip(docs / "root" / doc_text.MAN_SUBDIR / "man7" / "pipe.7.gz", PAGE)
    _gzip(docs / "root" / doc_text.GERMAN_MAN_SUBDIR / "man1" / "ls.1.gz", GERMAN_PAGE)
    policy = "\n\n".join([*(f"{LONG_ENOUGH} Number {i}." for i in range(30)), SHARED])
    _gzip(docs / "root" / doc_text.POLICY_TEXT, policy)
    (docs / STAMP_NAME).write_text(json.dumps({"packages": ["docs"]}), encoding="utf-8")
    fortune_dir = tmp_path / "fortunes"
    topic_dir = fortune_dir / "root" / fortunes.TOPIC_SUBDIR
    topic_dir.mkdir(parents=True)
    for topic in fortunes.IN_DISTRIBUTION_TOPICS:
        (topic_dir / topic).write_text(f"{topic} entry\n%\n{SHARED}\n", encoding="utf-8")
    (fortune_dir / STAMP_NAME).write_text(json.dumps({"packages": ["f"]}), encoding="utf-8")
    return docs, fortune_dir


def test_prepare_writes_each_set_once_without_downloading(
    caches: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    docs, fortune_dir = caches
    monkeypatch.setattr("shutil.which", lambda _: None)  # any download attempt would fail
    caplog.set_level(logging.INFO, logger="surety_serving.data")
    paths = prepare_doc_text(docs, seed=2, fortunes_dir=fortune_dir)
    assert paths == {
        "manpages": docs / "sets" / "seed-2" / "manpages.jsonl",
        "debian-policy": docs / "sets" / "seed-2" / "debian-policy.jsonl",
        "manpages-de": docs / "sets" / "seed-2" / "manpages-de.jsonl",
    }
    # The German pages are their own set: the English set reads only the top-level sections.
    german = read_jsonl(paths["manpages-de"])
    assert [e.text for e in german] == [GERMAN_PROSE] and german[0].label == "manpages-de"
    man = read_jsonl(paths["manpages"])
    policy = read_jsonl(paths["debian-policy"])
    assert len(man) == 4 and {e.label for e in man} == {"manpages"}
    assert len(policy) == 30 and {e.label for e in policy} == {"debian-policy"}
    assert SHARED not in {e.text for e in policy}
    manifest = json.loads((docs / "sets" / "seed-2" / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 2
    assert manifest["parameters"]["corpus"] == {"packages": ["docs"]}
    assert manifest["counts"]["debian-policy"] == {"paragraphs": 31, "sampled": 30}

    stamp = paths["manpages"].stat().st_mtime_ns
    assert prepare_doc_text(docs, seed=2, fortunes_dir=fortune_dir) == paths
    assert paths["manpages"].stat().st_mtime_ns == stamp
    assert caplog.messages[-1].startswith("sets cached")

    other = prepare_doc_text(docs, seed=3, fortunes_dir=fortune_dir)
    assert [e.text for e in read_jsonl(other["debian-policy"])] != [e.text for e in policy]
