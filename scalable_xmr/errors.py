"""User-facing errors.

Library code raises these (or plain ``ValueError`` / ``FileNotFoundError``) with a message that
names the file, the column or argument, and the offending value. The ``xmr`` CLI and the jobs catch
them and print one readable line, exiting non-zero (set ``XMR_DEBUG=1`` for the traceback).
"""

from __future__ import annotations


class XMRError(Exception):
    """Base class of every error scalable_xmr reports to a user."""


class InputError(XMRError, ValueError):
    """Bad data, a bad file or a bad argument value."""


class MissingError(XMRError, FileNotFoundError):
    """A file or directory that should exist does not."""


class RunStateError(XMRError, RuntimeError):
    """A run directory is in a state that forbids the operation (finished, incomplete...)."""


class ActorDiedError(RunStateError):
    """A Ray actor died and could not be restarted (its node was lost, restarts ran out...)."""


class CorruptFileError(InputError):
    """A model or checkpoint file failed its checksum or cannot be unpickled."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a job, with what the job kept and how to go on (``hint``, one line)."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint
