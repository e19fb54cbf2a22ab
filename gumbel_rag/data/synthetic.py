"""Synthetic two-hop (bridge) QA over invented entities, so no reader can answer from memory.

Each question needs two documents: A links the question's entity to a bridge entity, B links the bridge
entity to the answer. B never mentions the question's entity and A never contains the answer, so B is
found only through A: the "indirectly relevant" case that Gumbel Reranking is meant to learn.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from gumbel_rag.data.schema import Candidate, QAExample

__all__ = ["CHAINS", "RELATIONS", "generate_multihop"]

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st"]
_ONSETS += ["t", "th", "v", "vr", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["", "", "l", "n", "r", "s", "th", "m", "nd", "rk", "ss", "sk"]

_SUFFIXES = {
    "company": ["Works", "Industries", "Labs", "Holdings", "Mills", "Foundry"],
    "publisher": ["Press", "House", "Books"],
    "band": ["Echo", "Parade", "Circuit", "Choir", "Static"],
    "university": ["College", "Institute", "Academy"],
    "book": ["Chronicles", "Letters", "Garden", "Tides", "Lantern", "Orchard"],
    "town": ["", "", "ford", "holm", "wick", "by", "stead", "mouth"],
}
_PROFESSIONS = ["an engineer", "a painter", "a chemist", "a teacher", "a surveyor", "a violinist", "a sailor"]
# Consonant pile-ups ("rkkr") are unpronounceable; common English endings make real words ("Ferry").
_REJECT = re.compile(r"[^aeiouy]{3,}|(.)\1\1|kk|(qu|ing|er|y|ed|es|ly|on|ss)$")


@dataclass(frozen=True)
class Relation:
    """A binary relation between two kinds of entity and the sentences that state it."""

    subject: str
    object: str
    sentences: tuple[str, ...]


RELATIONS: dict[str, Relation] = {
    "founded": Relation(
        "person", "company", ("{s} founded the company {o}.", "The company {o} was founded by {s}.")
    ),
    "headquartered": Relation(
        "company",
        "town",
        ("{s} is headquartered in the town of {o}.", "The headquarters of {s} are in the town of {o}."),
    ),
    "born_in": Relation(
        "person", "town", ("{s} was born in the town of {o}.", "{s} was born and raised in the town of {o}.")
    ),
    "on_river": Relation(
        "town",
        "river",
        ("The town of {s} lies on the river {o}.", "{s} is a town on the banks of the river {o}."),
    ),
    "wrote": Relation("person", "book", ("{s} wrote the novel {o}.", "The novel {o} was written by {s}.")),
    "published_by": Relation(
        "book", "publisher", ("{s} was published by {o}.", "The publisher {o} first printed {s}.")
    ),
    "lead_singer": Relation(
        "band",
        "person",
        ("{o} is the lead singer of the band {s}.", "The band {s} is fronted by the singer {o}."),
    ),
    "formed_in": Relation("band", "town", ("The band {s} was formed in the town of {o}.",)),
    "mayor": Relation(
        "town", "person", ("The mayor of {s} is {o}.", "{o} serves as the mayor of the town of {s}.")
    ),
    "studied_at": Relation("person", "university", ("{s} studied at {o}.", "{s} graduated from {o}.")),
    "located_in": Relation("university", "town", ("{s} is located in the town of {o}.",)),
}

# (first hop, second hop, question about the first hop's subject)
CHAINS: tuple[tuple[str, str, str], ...] = (
    ("founded", "headquartered", "In which town is the company founded by {s} headquartered?"),
    ("born_in", "on_river", "On which river lies the town where {s} was born?"),
    ("wrote", "published_by", "Which publisher published the novel written by {s}?"),
    ("lead_singer", "born_in", "In which town was the lead singer of the band {s} born?"),
    ("mayor", "studied_at", "At which university did the mayor of {s} study?"),
    ("headquartered", "mayor", "Who is the mayor of the town where {s} is headquartered?"),
    ("studied_at", "located_in", "In which town is the university where {s} studied located?"),
)

_FILLERS = {
    "person": ["{s} worked as {job} for many years.", "{s} trained as {job} early in life."],
    "company": ["{s} was established in {year}.", "{s} employs about {n} people."],
    "town": ["{s} has a population of about {n}.", "{s} received its charter in {year}."],
    "book": ["{s} first appeared in {year}."],
    "band": ["{s} released its first album in {year}."],
    "university": ["{s} was established in {year}.", "{s} has about {n} students."],
}
# Lower-cased words of every template: an invented stem must never read as one of them.
_TEMPLATE_WORDS = {
    w.strip(".?,{}").lower()
    for texts in [r.sentences for r in RELATIONS.values()]
    + [[c[2] for c in CHAINS]]
    + list(_FILLERS.values())
    for t in texts
    for w in t.split()
}


class _Names:
    """Invented names, unique within one generator run and not substrings of each other in one example."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.example: list[str] = []

    def new_example(self) -> None:
        self.example = []

    def _syllable(self) -> str:
        r = self.rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)

    def stem(self) -> str:
        while True:
            stem = "".join(self._syllable() for _ in range(self.rng.choice((2, 2, 3)))).capitalize()
            low = stem.lower()
            if not 5 <= len(stem) <= 9 or _REJECT.search(low) or low in self.used or low in _TEMPLATE_WORDS:
                continue
            # Substrings would make "the answer is not in document A" checks ambiguous.
            if any(low in other or other in low for other in self.example):
                continue
            self.used.add(low)
            self.example.append(low)
            return stem

    def entity(self, kind: str) -> str:
        r = self.rng
        if kind == "person":
            return f"{self.stem()} {self.stem()}"
        if kind == "town":
            stem = self.stem()
            return stem + r.choice(_SUFFIXES["town"]) if len(stem) <= 6 else stem
        if kind == "river":
            return self.stem()
        if kind == "book":
            return f"The {self.stem()} {r.choice(_SUFFIXES['book'])}"
        return f"{self.stem()} {r.choice(_SUFFIXES[kind])}"


def _document(rng: random.Random, relation: str, s: str, o: str) -> Candidate:
    """A one- or two-sentence document stating ``relation(s, o)``, titled by its subject."""
    rel = RELATIONS[relation]
    sentences = [rng.choice(rel.sentences).format(s=s, o=o)]
    if rel.subject in _FILLERS and rng.random() < 0.5:
        filler = rng.choice(_FILLERS[rel.subject]).format(
            s=s, job=rng.choice(_PROFESSIONS), year=rng.randint(1750, 1990), n=rng.randint(2, 90) * 100
        )
        sentences.insert(rng.randint(0, 1), filler)
    return Candidate(text=" ".join(sentences), title=s, metadata={"relation": relation})


def _involving(
    rng: random.Random, names: _Names, entity: str, kind: str, banned: set[str]
) -> Candidate | None:
    """A hard negative: a fact about ``entity`` through a relation that the question does not ask about."""
    options = [
        (name, side)
        for name, rel in RELATIONS.items()
        if name not in banned
        for side in ("subject", "object")
        if getattr(rel, side) == kind
    ]
    if not options:
        return None
    name, side = rng.choice(options)
    rel = RELATIONS[name]
    if side == "subject":
        return _document(rng, name, entity, names.entity(rel.object))
    return _document(rng, name, names.entity(rel.subject), entity)


def _chain_docs(
    rng: random.Random, names: _Names, chain: tuple[str, str, str]
) -> tuple[list[Candidate], str, str, str]:
    """The two gold documents of a fresh instance of ``chain``: (docs, entity, bridge, answer)."""
    hop1, hop2, _ = chain
    s = names.entity(RELATIONS[hop1].subject)
    b = names.entity(RELATIONS[hop1].object)
    t = names.entity(RELATIONS[hop2].object)
    return [_document(rng, hop1, s, b), _document(rng, hop2, b, t)], s, b, t


def _example(rng: random.Random, names: _Names, n_candidates: int, ex_id: str, source: str) -> QAExample:
    names.new_example()
    chain = rng.choice(CHAINS)
    hop1, hop2, question = chain
    (doc_a, doc_b), s, b, t = _chain_docs(rng, names, chain)
    distractors: list[Candidate] = []
    # Facts about the question's entity and the bridge entity through other relations share the
    # entity names with the gold documents, so lexical overlap alone cannot find the gold pair.
    for entity, kind, banned in (
        (s, RELATIONS[hop1].subject, {hop1}),
        (b, RELATIONS[hop1].object, {hop1, hop2}),
    ):
        doc = _involving(rng, names, entity, kind, banned)
        if doc is not None and len(distractors) + 2 < n_candidates:
            distractors.append(doc)
    while len(distractors) + 2 < n_candidates:
        room = n_candidates - 2 - len(distractors)
        if room >= 2 and rng.random() < 0.5:
            # Another instance of the same chain: same relation words, different entities.
            distractors.extend(_chain_docs(rng, names, chain)[0])
        else:
            relation = rng.choice(list(RELATIONS))
            rel = RELATIONS[relation]
            distractors.append(_document(rng, relation, names.entity(rel.subject), names.entity(rel.object)))
    docs = [doc_a, doc_b, *distractors]
    order = list(range(len(docs)))
    rng.shuffle(order)
    candidates = [docs[i] for i in order]
    for j, c in enumerate(candidates):
        c.id = f"{ex_id}-p{j}"
    return QAExample(
        question=question.format(s=s),
        answers=[t],
        candidates=candidates,
        gold=sorted([order.index(0), order.index(1)]),
        id=ex_id,
        source=source,
        metadata={"type": "bridge", "chain": f"{hop1}>{hop2}", "entity": s, "bridge": b},
    )


def generate_multihop(n: int, *, seed: int = 0, n_candidates: int = 8) -> list[QAExample]:
    """``n`` bridge questions over invented entities, ``n_candidates`` shuffled documents each, gold = [A, B].

    Deterministic for a seed; ``metadata`` names the chain, the question's entity and the bridge entity.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be >= 2 (the two gold documents), got {n_candidates}")
    rng = random.Random(seed)
    names = _Names(rng)
    return [
        _example(rng, names, n_candidates, f"synthetic-{seed}-{i}", f"synthetic(seed={seed}):{i + 1}")
        for i in range(n)
    ]
