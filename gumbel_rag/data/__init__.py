"""Data: the QA-example schema, loaders for QA logs / HotpotQA / MuSiQue, capture, synthetic data, mining."""

from gumbel_rag.data.formats import (
    FORMATS,
    detect_format,
    filter_rated,
    filter_trainable,
    load_examples,
    load_many,
    write_qalog,
)
from gumbel_rag.data.mining import amine_qa_log, load_corpus, mine_candidates, mine_file, mine_qa_log
from gumbel_rag.data.qalog_writer import PendingRuns, QALogWriter, QARun
from gumbel_rag.data.schema import Candidate, DataError, LoadSummary, QAExample
from gumbel_rag.data.synthetic import generate_multihop

__all__ = [
    "FORMATS",
    "Candidate",
    "DataError",
    "LoadSummary",
    "PendingRuns",
    "QAExample",
    "QALogWriter",
    "QARun",
    "amine_qa_log",
    "detect_format",
    "filter_rated",
    "filter_trainable",
    "generate_multihop",
    "load_corpus",
    "load_examples",
    "load_many",
    "mine_candidates",
    "mine_file",
    "mine_qa_log",
    "write_qalog",
]
