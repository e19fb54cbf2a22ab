"""Capture a running application's QA log: rows appended as JSON Lines that ``gumbel-rag train`` reads.

:class:`QALogWriter` appends one row per answered question (the question, every candidate the first
stage retrieved, the reranker's picks and scores, the answer, a run id and a timestamp) and, later,
feedback records (a corrected answer, a rating) that the QA-log loader joins onto their row. Each line
goes to the file in one ``write()`` on a descriptor opened with ``O_APPEND``, under a thread lock and an
``fcntl`` lock on a lock file beside the log, so threads, asyncio tasks and processes can share one log
without interleaving or losing lines. :class:`PendingRuns` is the bookkeeping the framework recorders
share: a run's pieces arrive as separate events, and the row is written only when the top-level run
succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from gumbel_rag.data.files import json_safe
from gumbel_rag.data.formats.qalog import (
    FEEDBACK_KEY,
    RUN_ID_KEY,
    TIMESTAMP_KEY,
    check_example_text,
    example_record,
)
from gumbel_rag.data.schema import Candidate, QAExample

try:  # POSIX; elsewhere the writer is safe across threads of one process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PICKED_KEY",
    "RERANKER_KEY",
    "RERANK_SCORE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "PendingRuns",
    "QALogWriter",
    "QARun",
]

logger = logging.getLogger(__name__)

# Metadata keys of a captured row (the loader keeps them: candidate and row metadata).
RETRIEVAL_SCORE_KEY = "retrieval_score"  # candidate: the first stage's score, as the miners write it
RERANK_SCORE_KEY = "rerank_score"  # candidate: the reranker's score, for the candidates it picked
PICKED_KEY = "picked"  # row: the candidates the reranker returned, as indices, best first
RERANKER_KEY = "reranker"  # row: the reranker's name, where the framework says it

_SUFFIXES = (".jsonl", ".ndjson")
# Pending runs a recorder holds at most: a run whose end never comes (a stream abandoned half-way)
# must not grow memory without bound.
DEFAULT_MAX_PENDING = 10_000

Redact = Callable[[str], str]
Pick = tuple["Candidate | str", "float | None"]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _redacted(redact: Redact | None, text: str, what: str) -> str:
    if redact is None:
        return text
    out = redact(text)
    if not isinstance(out, str):
        raise TypeError(f"redact must return a string, got {type(out).__name__} for the {what}")
    return out


def _redact_strings(redact: Redact | None, value: Any, what: str) -> Any:
    """``value`` with ``redact`` applied to every string in it (dict keys left as they are)."""
    if redact is None:
        return value
    if isinstance(value, str):
        return _redacted(redact, value, what)
    if isinstance(value, Mapping):
        return {k: _redact_strings(redact, v, what) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_strings(redact, v, what) for v in value]
    return value


def _as_candidate(value: Candidate | str, what: str) -> Candidate:
    if isinstance(value, str):
        return Candidate(text=value)
    if not isinstance(value, Candidate):
        raise TypeError(f"{what} must be a gumbel_rag.data.Candidate or a string, got {type(value).__name__}")
    if not isinstance(value.text, str):
        raise TypeError(f"{what}.text must be a string, got {type(value.text).__name__}")
    return value


def _score(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number or None, got {type(value).__name__}")
    value = float(value)
    return value if math.isfinite(value) else None


def _answers(answer: str | Sequence[str], redact: Redact | None) -> list[str]:
    items = [answer] if isinstance(answer, str) else list(answer)
    if not items or not all(isinstance(a, str) for a in items):
        raise ValueError(f"answer must be a non-empty string or a list of them, got {answer!r}")
    out = [_redacted(redact, a, "answer") for a in items]
    if any(not a.strip() for a in out):
        raise ValueError("answer is empty: a row without an answer cannot teach the reranker")
    return out


def match_picks(
    candidates: Sequence[Candidate], picks: Sequence[Candidate]
) -> tuple[list[int], list[Candidate]]:
    """Each pick's index among ``candidates`` (best first), and the picks found nowhere among them.

    A pick is the same document as a candidate when their ids and texts agree; failing that, their texts;
    failing that, their ids. Each candidate is matched once, so duplicate documents keep their places.
    Picks that match nothing are appended after the candidates by the caller (they are returned here).
    """
    used: set[int] = set()
    indices: list[int] = []
    extra: list[Candidate] = []
    rules: list[Callable[[Candidate, Candidate], bool]] = [
        lambda c, p: c.id is not None and c.id == p.id and c.text == p.text,
        lambda c, p: c.text == p.text,
        lambda c, p: c.id is not None and c.id == p.id,
    ]
    for pick in picks:
        found = next(
            (i for rule in rules for i, c in enumerate(candidates) if i not in used and rule(c, pick)),
            None,
        )
        if found is None:
            indices.append(len(candidates) + len(extra))
            extra.append(pick)
        else:
            used.add(found)
            indices.append(found)
    return indices, extra


def sampled(run_id: str, rate: float) -> bool:
    """Whether a run is kept at sampling ``rate``: decided by its id, so every process agrees."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(_SUFFIXES):
        raise ValueError(
            f"QALogWriter writes JSON Lines: {p} must end in .jsonl or .ndjson (the extension tells the "
            "loader the format)"
        )
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory; QALogWriter needs a file name")
    return p


class _AppendFile:
    """A file that lines are appended to whole, by threads and processes at once, rotated by size."""

    def __init__(self, path: Path, max_bytes: int | None, fsync: bool) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.lock_path = path.with_name(f".{path.name}.lock")
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._pid = os.getpid()

    def _reset_after_fork(self) -> None:
        # A forked child shares the parent's open file descriptions, and flock locks belong to those:
        # it needs descriptors of its own, or its lock would not exclude the parent.
        if self._pid != os.getpid():
            self._fd = self._lock_fd = None
            self._thread_lock = threading.Lock()
            self._pid = os.getpid()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if fcntl is None:
                yield
                return
            if self._lock_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        """The descriptor of the file now at ``path`` (another process may have rotated it away)."""
        fd = self._fd
        if fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o666)
        return self._fd

    def _rotate(self, fd: int) -> None:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        stem, suffix = self.path.name[: -len(self.path.suffix)], self.path.suffix
        target = self.path.with_name(f"{stem}.{stamp}{suffix}")
        n = 0
        while target.exists():
            n += 1
            target = self.path.with_name(f"{stem}.{stamp}-{n}{suffix}")
        os.replace(self.path, target)
        os.close(fd)
        self._fd = None

    def append(self, data: bytes) -> None:
        """Append ``data`` (whole lines) at the end of the log, rotating first if it would grow too big."""
        self._reset_after_fork()
        with self._locked():
            fd = self._open()
            size = os.fstat(fd).st_size
            if self.max_bytes is not None and size > 0 and size + len(data) > self.max_bytes:
                self._rotate(fd)
                fd = self._open()
                size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                # A writer killed mid-line left a torn line: start on a line of our own, so that only
                # the torn one is lost (the loader reports it as malformed JSON).
                data = b"\n" + data
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)

    def close(self) -> None:
        """Close the descriptors (the next append opens them again)."""
        with self._thread_lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None and self._pid == os.getpid():
                    os.close(fd)
            self._fd = self._lock_fd = None


@dataclasses.dataclass
class QARun:
    """One application run being captured: filled in as its pieces arrive, written by :meth:`commit`.

    ``candidates`` are the documents the first stage returned (the list the reranker chose from), each
    with its first-stage score in ``metadata["retrieval_score"]`` where there is one; ``reranked`` the
    reranker's picks, best first, with their scores. Picks are matched to candidates by id and text.
    """

    writer: QALogWriter
    run_id: str
    question: str | None = None
    answer: str | Sequence[str] | None = None
    candidates: list[Candidate | str] = dataclasses.field(default_factory=list)
    reranked: list[Pick] | None = None
    reranker: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    done: bool = False
    # A recorder's working state for this run (never written); dropped with the run.
    scratch: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def commit(self) -> bool:
        """Write the row (once); False when it was sampled out, already written or discarded."""
        if self.done:
            return False
        self.done = True
        if self.question is None or self.answer is None:
            raise ValueError(f"run {self.run_id}: nothing to write without a question and an answer")
        return (
            self.writer.write(
                self.question,
                self.answer,
                self.candidates,
                reranked=self.reranked,
                reranker=self.reranker,
                run_id=self.run_id,
                metadata=self.metadata,
            )
            is not None
        )

    def discard(self) -> None:
        """Write nothing for this run (it failed)."""
        self.done = True

    def __enter__(self) -> QARun:
        """The run itself; set its fields inside the block."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Commit when the block succeeded; write nothing when it raised."""
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class QALogWriter:
    """Append QA-log rows and feedback to a JSON Lines file that ``gumbel-rag train`` reads as it is.

    ``path`` must end in ``.jsonl`` (or ``.ndjson``). ``max_bytes`` rotates the file before a row would
    take it past that size: the full file is renamed to ``<stem>.<UTC time>.jsonl`` beside it and a new
    one started (nothing is deleted; a directory of them loads as one log, oldest first). ``sample_rate``
    keeps that share of runs, chosen by run id (every process agrees, and feedback for a run that was not
    kept is not written either). ``redact`` is applied to every text before it is written: the question,
    the answers, each candidate's text and title, and every string in the metadata (ids, run ids and
    timestamps are not texts). ``fsync`` forces each line to disk (slower; a line is always flushed to
    the operating system). ``metadata`` is added to every row (an application name, a version).

    Safe to share between threads, asyncio tasks and processes appending to one file (POSIX: an
    ``fcntl`` lock on ``.<name>.lock`` beside the log; without ``fcntl``, threads of one process).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        sample_rate: float = 1.0,
        redact: Redact | None = None,
        fsync: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Check the options; nothing is opened until the first row."""
        self.path = _check_path(path)
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be a positive integer or None (no rotation), got {max_bytes!r}")
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, int | float)
            or not 0.0 <= sample_rate <= 1.0
        ):
            raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
        if redact is not None and not callable(redact):
            raise TypeError(f"redact must be a callable str -> str or None, got {type(redact).__name__}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
        self.max_bytes = max_bytes
        self.sample_rate = float(sample_rate)
        self.redact = redact
        self.fsync = bool(fsync)
        self.metadata = dict(metadata or {})
        self._file = _AppendFile(self.path, max_bytes, self.fsync)

    # ------------------------------------------------------------------ rows

    def keeps(self, run_id: str) -> bool:
        """Whether rows and feedback of ``run_id`` are written at this writer's sampling rate."""
        return sampled(run_id, self.sample_rate)

    def build_row(
        self,
        question: str,
        answer: str | Sequence[str],
        candidates: Sequence[Candidate | str] = (),
        *,
        reranked: Sequence[Pick] | None = None,
        reranker: str | None = None,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: str | None = None,
    ) -> QAExample:
        """The example a row holds, redacted and checked (what :meth:`write` writes and the loader reads)."""
        run_id = str(uuid.uuid4()) if run_id is None else str(run_id)
        if not isinstance(question, str):
            raise TypeError(f"question must be a string, got {type(question).__name__}")
        question = _redacted(self.redact, question, "question")
        if not question.strip():
            raise ValueError("question is empty")
        answers = _answers(answer, self.redact)
        docs = [self._candidate(_as_candidate(c, f"candidates[{i}]")) for i, c in enumerate(candidates)]
        row_metadata: dict[str, Any] = {**self.metadata, **dict(metadata or {})}
        row_metadata = json_safe(_redact_strings(self.redact, row_metadata, "metadata"))
        if reranked is not None:
            picks = [self._candidate(_as_candidate(c, f"reranked[{i}]")) for i, (c, _) in enumerate(reranked)]
            scores = [_score(s, f"reranked[{i}] score") for i, (_, s) in enumerate(reranked)]
            indices, extra = match_picks(docs, picks)
            docs.extend(extra)
            for index, score in zip(indices, scores, strict=True):
                if score is not None:
                    docs[index] = dataclasses.replace(
                        docs[index], metadata={**docs[index].metadata, RERANK_SCORE_KEY: score}
                    )
            row_metadata[PICKED_KEY] = indices
        if reranker is not None:
            row_metadata[RERANKER_KEY] = str(reranker)
        row_metadata[RUN_ID_KEY] = run_id
        row_metadata[TIMESTAMP_KEY] = timestamp or _now()
        example = QAExample(
            question=question, answers=answers, candidates=docs, id=run_id, metadata=row_metadata
        )
        check_example_text(example, (str(self.path), 0))
        return example

    def _candidate(self, c: Candidate) -> Candidate:
        title = None if c.title is None else _redacted(self.redact, c.title, "candidate title")
        return Candidate(
            text=_redacted(self.redact, c.text, "candidate text"),
            id=None if c.id is None else str(c.id),
            title=title,
            metadata=json_safe(_redact_strings(self.redact, dict(c.metadata or {}), "candidate metadata")),
        )

    def write(
        self,
        question: str,
        answer: str | Sequence[str],
        candidates: Sequence[Candidate | str] = (),
        *,
        reranked: Sequence[Pick] | None = None,
        reranker: str | None = None,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Append one row; returns its run id (a new UUID unless given), or None when it was sampled out.

        ``candidates``: the documents the first stage returned, in its order (``Candidate``s or texts);
        their first-stage scores go in ``metadata["retrieval_score"]``. ``reranked``: the reranker's
        output, best first, as ``(document, score)`` pairs; each is matched to its candidate (by id and
        text; one found nowhere is added), which gets ``metadata["rerank_score"]``, and the row gets
        ``metadata["picked"]``, their indices. Raises ValueError / TypeError for a row the loader would
        refuse (an empty question or answer, a lone surrogate), before anything is written.
        """
        run_id = str(uuid.uuid4()) if run_id is None else str(run_id)
        if not self.keeps(run_id):
            return None
        example = self.build_row(
            question,
            answer,
            candidates,
            reranked=reranked,
            reranker=reranker,
            run_id=run_id,
            metadata=metadata,
        )
        self._append(example_record(example))
        return run_id

    async def awrite(self, *args: Any, **kwargs: Any) -> str | None:
        """:meth:`write` in a worker thread, so an ``fsync`` does not hold up the event loop."""
        return await asyncio.to_thread(self.write, *args, **kwargs)

    def run(
        self,
        question: str | None = None,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> QARun:
        """A run to fill in (``with writer.run(question) as run: ... run.answer = ...``): written when the
        block succeeds, nothing written when it raises."""
        return QARun(
            writer=self,
            run_id=str(uuid.uuid4()) if run_id is None else str(run_id),
            question=question,
            metadata=dict(metadata or {}),
        )

    # ------------------------------------------------------------------ feedback

    def feedback(
        self,
        run_id: str,
        answer: str | None = None,
        rating: float | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a corrected (or accepted) ``answer`` and/or a ``rating`` for the row of ``run_id``.

        The loader joins it onto that row (the latest feedback wins, field by field): ``gumbel-rag train``
        then learns from the corrected answer, and ``--min-rating`` keeps only rows rated at least that.
        Returns False when the run was sampled out (nothing is written).
        """
        if not isinstance(run_id, str | uuid.UUID) or not str(run_id):
            raise ValueError(f"run_id must be the run id of a row, got {run_id!r}")
        run_id = str(run_id)
        if answer is None and rating is None:
            raise ValueError("feedback needs an answer, a rating or both")
        record: dict[str, Any] = {RUN_ID_KEY: run_id}
        if answer is not None:
            if not isinstance(answer, str):
                raise TypeError(f"feedback answer must be a string, got {type(answer).__name__}")
            record["answer"] = _answers(answer, self.redact)[0]
        if rating is not None:
            rated = _score(rating, "rating")
            if rated is None:
                raise ValueError(f"rating must be a finite number, got {rating!r}")
            record["rating"] = rated
        if metadata:
            record["metadata"] = json_safe(_redact_strings(self.redact, dict(metadata), "metadata"))
        record[TIMESTAMP_KEY] = _now()
        if not self.keeps(run_id):
            return False
        self._append({FEEDBACK_KEY: record})
        return True

    async def afeedback(self, *args: Any, **kwargs: Any) -> bool:
        """:meth:`feedback` in a worker thread."""
        return await asyncio.to_thread(self.feedback, *args, **kwargs)

    # ------------------------------------------------------------------ files

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(json_safe(record), ensure_ascii=False) + "\n"
        self._file.append(line.encode("utf-8"))

    def files(self) -> list[Path]:
        """The log's files, oldest first: the rotated ones, then the live one (those that exist)."""
        stem, suffix = self.path.name[: -len(self.path.suffix)], self.path.suffix
        rotated = sorted(
            p for p in self.path.parent.glob(f"{stem}.[0-9]*{suffix}") if p != self.path and p.is_file()
        )
        return [*rotated, *([self.path] if self.path.is_file() else [])]

    def close(self) -> None:
        """Close the file (a later row opens it again)."""
        self._file.close()

    def __enter__(self) -> QALogWriter:
        """The writer; closed at the end of the block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """The options only: a copy (or an unpickled writer) opens the file on its own."""
        state = dict(self.__dict__)
        state.pop("_file")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the options; the file is opened on the next row."""
        self.__dict__.update(state)
        self._file = _AppendFile(self.path, self.max_bytes, self.fsync)

    def __repr__(self) -> str:
        """The path and the options that change what is written."""
        return f"QALogWriter({str(self.path)!r}, max_bytes={self.max_bytes}, sample_rate={self.sample_rate})"


def as_writer(path_or_writer: QALogWriter | str | os.PathLike[str], **options: Any) -> QALogWriter:
    """``path_or_writer`` itself if it is a writer (then ``options`` must be empty), else a new writer."""
    if isinstance(path_or_writer, QALogWriter):
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            raise ValueError(
                f"pass {', '.join(sorted(given))} to the QALogWriter itself, not with an existing writer"
            )
        return path_or_writer
    return QALogWriter(path_or_writer, **{k: v for k, v in options.items() if v is not None})


class PendingRuns:
    """Runs being captured, keyed by the id of their top-level run, for recorders fed by events.

    ``link(child, parent)`` ties an event's run (or span) to its parent, so that any id under a
    top-level run finds that run's :class:`QARun`. ``finish(root, ok)`` commits it (or, when the run
    failed, discards it) and forgets its ids. At most ``max_pending`` top-level runs are tracked: beyond
    that the oldest is dropped, unwritten, with a warning (a run whose end never comes, such as a stream
    abandoned half-way, must not grow memory without bound). Thread-safe.
    """

    def __init__(self, writer: QALogWriter, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        """Runs for ``writer``."""
        self.writer = writer
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._root: dict[str, str] = {}  # any linked id -> its top-level run's id
        # top-level run id -> (the ids linked to it, its run once opened), oldest first
        self._tracked: OrderedDict[str, tuple[list[str], list[QARun]]] = OrderedDict()

    def _track(self, root: str) -> tuple[list[str], list[QARun]]:
        entry = self._tracked.get(root)
        if entry is None:
            entry = self._tracked[root] = ([root], [])
            self._root[root] = root
            if len(self._tracked) > self.max_pending:
                old, (members, _) = self._tracked.popitem(last=False)
                for key in members:
                    self._root.pop(key, None)
                logger.warning(
                    "QA log: more than %d runs pending; dropped the oldest (%s) unwritten",
                    self.max_pending,
                    old,
                )
        return entry

    def link(self, run_id: Any, parent_id: Any | None) -> str:
        """Record that ``run_id`` runs under ``parent_id`` (None: it is a top-level run); its root's id."""
        key = str(run_id)
        with self._lock:
            if parent_id is None:
                root = key
            else:
                parent = str(parent_id)
                root = self._root.get(parent, parent)
            members, _ = self._track(root)
            if key not in self._root:
                members.append(key)
                self._root[key] = root
            return root

    def root_of(self, run_id: Any) -> str | None:
        """The id of the top-level run ``run_id`` runs under (None if it was never linked)."""
        with self._lock:
            return self._root.get(str(run_id))

    def get(self, run_id: Any) -> QARun:
        """The run that ``run_id`` belongs to (a top-level run of its own if it was never linked)."""
        with self._lock:
            root = self._root.get(str(run_id), str(run_id))
            _, runs = self._track(root)
            if not runs:
                runs.append(self.writer.run(run_id=root))
            return runs[0]

    def peek(self, run_id: Any) -> QARun | None:
        """The run that ``run_id`` belongs to if one was opened, without opening one."""
        with self._lock:
            root = self._root.get(str(run_id), str(run_id))
            entry = self._tracked.get(root)
            return entry[1][0] if entry is not None and entry[1] else None

    def finish(self, root: Any, ok: bool) -> bool:
        """End the top-level run ``root``: write its row when ``ok`` (and complete), else discard it.

        Returns whether a row was written. A run without a question or an answer is not written (logged
        at INFO: a retriever called on its own is not an answered question).
        """
        key = str(root)
        with self._lock:
            members, runs = self._tracked.pop(key, ([], []))
            for member in members:
                self._root.pop(member, None)
        if not runs:
            return False
        run = runs[0]
        if not ok:
            run.discard()
            return False
        if run.question is None or run.answer is None:
            missing = "a question" if run.question is None else "an answer"
            logger.info("QA log: run %s ended without %s; nothing written", key, missing)
            run.discard()
            return False
        return run.commit()

    def __len__(self) -> int:
        """The number of top-level runs tracked."""
        with self._lock:
            return len(self._tracked)
