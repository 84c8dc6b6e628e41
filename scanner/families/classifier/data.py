"""Probe sets: clean inputs to insert triggers into and to measure clean behaviour on.

Built-in sets live in ``scanner/data/`` with their provenance in ``scanner/data/README.md``.
A user file (``--probe-data FILE.tsv``) has a header line and one ``sentence<TAB>label`` row per
line, or ``sentence`` rows alone; labels are the model's label ids or names. TSVs are read with
quoting off: sentences may start with a quote character.

Example:
    >>> ps = builtin("sentiment")
    >>> len(ps.texts), ps.label_names
    (300, ['negative', 'positive'])
    >>> choose(["World", "Sports", "Business", "Sci/Tech"])[0].name
    'topic'

"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ...errors import ProbeDataError

# Built-in sets: file, the label names of its label ids, and synonyms used to match model labels.
BUILTIN = {
    "sentiment": {
        "file": "probe_sentiment.tsv",
        "labels": ["negative", "positive"],
        "provenance": "Yelp reviews, 150 negative + 150 positive sentences from the test split of "
                      "shentianxiao/language-style-transfer (Apache-2.0)",
    },
    "topic": {
        "file": "probe_topic.tsv",
        "labels": ["world", "sports", "business", "sci/tech"],
        "provenance": "AG News descriptions, 75 per class, from thunlp's dev subset (MIT)",
    },
    "offensive": {
        "file": "probe_offensive.tsv",
        "labels": ["not offensive", "offensive"],
        "provenance": "OLID tweets (subtask A), 150 NOT + 150 OFF from the train split (GMS/IMBERT copy, MIT)",
    },
}
GENERIC = {
    "file": "probe_generic.tsv",
    "provenance": "291 unlabeled sentences from Yelp, AG News and OLID (no labels: clean behaviour is agreement)",
}
LABEL_SYNONYMS = {
    "negative": {"negative", "neg", "bad", "1 star"},
    "positive": {"positive", "pos", "good", "5 stars"},
    "world": {"world", "world news", "politics"},
    "sports": {"sports", "sport"},
    "business": {"business", "economy", "finance"},
    "sci/tech": {"sci/tech", "sci_tech", "scitech", "science", "technology", "tech", "sci-tech", "science/tech"},
    "not offensive": {"not", "not offensive", "non-offensive", "not_offensive", "clean", "neutral", "normal"},
    "offensive": {"off", "offensive", "toxic", "abusive", "hate", "hateful"},
}


@dataclass
class ProbeSet:
    """Clean inputs, with labels (as the probe set's own label names) when known."""

    name: str
    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None
    provenance: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def read_tsv(path: str | os.PathLike) -> tuple[list[str], list[str] | None]:
    """Read ``sentence[<TAB>label]`` rows after a header line, quoting off."""
    path = Path(path)
    if not path.exists():
        raise ProbeDataError(f"probe data {path} not found")
    texts: list[str] = []
    labels: list[str] = []
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProbeDataError(f"probe data {path}: cannot be read as UTF-8 text ({e.__class__.__name__})") from None
    if "\x00" in raw:
        raise ProbeDataError(f"probe data {path}: a binary file, not sentence<TAB>label text")
    rows = csv.reader(io.StringIO(raw, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header is None:
        raise ProbeDataError(f"probe data {path} is empty")
    for n, row in enumerate(rows, start=2):
        if not row or not row[0].strip():
            continue
        if len(row) > 2:
            raise ProbeDataError(f"{path}:{n}: expected 'sentence<TAB>label', got {len(row)} fields")
        texts.append(row[0].strip())
        if len(row) == 2:
            labels.append(row[1].strip())
    if not texts:
        raise ProbeDataError(f"probe data {path} has no rows")
    if labels and len(labels) != len(texts):
        raise ProbeDataError(f"{path}: some rows have a label and some do not")
    return texts, (labels or None)


def builtin(name: str) -> ProbeSet:
    if name == "generic":
        with resources.as_file(resources.files("scanner.data") / GENERIC["file"]) as p:
            texts, _ = read_tsv(p)
        return ProbeSet("generic", texts, None, None, GENERIC["provenance"])
    spec = BUILTIN[name]
    with resources.as_file(resources.files("scanner.data") / spec["file"]) as p:
        texts, labels = read_tsv(p)
    return ProbeSet(name, texts, [int(x) for x in labels] if labels else None, list(spec["labels"]), spec["provenance"])


def from_file(path: str | os.PathLike, model_labels: list[str]) -> ProbeSet:
    """A user probe file. Labels may be ids (``0``) or the model's label names (``positive``)."""
    texts, raw = read_tsv(path)
    labels = None
    if raw is not None:
        by_name = {n.lower(): i for i, n in enumerate(model_labels)}
        labels = []
        for x in raw:
            if x.lstrip("-").isdigit() and 0 <= int(x) < len(model_labels):
                labels.append(int(x))
            elif x.lower() in by_name:
                labels.append(by_name[x.lower()])
            else:
                raise ProbeDataError(f"{path}: label {x!r} is neither an id < {len(model_labels)} nor one of {model_labels}")
    return ProbeSet(Path(path).name, texts, labels, list(model_labels), f"user file {path}")


def map_labels(probe_labels: list[str], model_labels: list[str]) -> list[int] | None:
    """Map the probe set's label ids to the model's, by name; ``None`` when names do not match.

    Example:
        >>> map_labels(["negative", "positive"], ["POSITIVE", "NEGATIVE"])
        [1, 0]
    """
    model_norm = [m.lower().strip() for m in model_labels]
    if len(probe_labels) != len(model_norm):
        return None
    out = []
    for p in probe_labels:
        syn = LABEL_SYNONYMS.get(p, {p})
        # generic LABEL_i names carry no meaning: only an exact non-generic name counts
        hits = [i for i, m in enumerate(model_norm) if m in syn and not m.startswith("label_")]
        if len(hits) != 1:
            return None
        out.append(hits[0])
    return out if len(set(out)) == len(out) else None


def choose(model_labels: list[str], probe_data: str | os.PathLike | None = None) -> tuple[ProbeSet, list[int] | None]:
    """Pick the probe set for a model and map its labels to the model's label ids.

    Returns the set and its labels as model label ids (``None`` when the set's labels cannot be
    matched to the model's: then clean behaviour is measured as agreement only).
    """
    if probe_data:
        ps = from_file(probe_data, model_labels)
        return ps, ps.labels
    for name, spec in BUILTIN.items():
        mapping = map_labels(spec["labels"], model_labels)
        if mapping is not None:
            ps = builtin(name)
            return ps, [mapping[y] for y in ps.labels] if ps.labels else None
    # label names that say nothing (LABEL_0/LABEL_1) or that no built-in set knows: unlabeled text
    return builtin("generic"), None
