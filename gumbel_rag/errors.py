"""The errors a user can fix: bad input, a model that cannot be had, an option that cannot work.

Each is raised with a one-line message that names what is wrong (the file and line, the model, the
option) and what to do. The command line prints such an error as ``error: <message>`` and exits 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GumbelRagError", "ModelLoadError", "TrainingError"]


class GumbelRagError(Exception):
    """Base of every user-fixable gumbel-rag error."""


class ConfigError(GumbelRagError, ValueError):
    """An option value or a combination of options that cannot work (named in the message)."""


class ModelLoadError(GumbelRagError, OSError):
    """A model that cannot be loaded: not found, offline, gated, not a model (named in the message)."""


class TrainingError(GumbelRagError, RuntimeError):
    """A run that cannot start or cannot produce a usable model (nothing to train, non-finite weights ...)."""
