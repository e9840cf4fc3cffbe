"""User-facing errors: each message says what is wrong and what to do about it."""

import re

_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*):[^/\s@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it hidden: ``https://alice:***@host``."""
    return _PASSWORD.sub(r"\1:***@", text)


def cause(exc: BaseException) -> str:
    """``exc`` in one line for a warning: its type and its (redacted) message."""
    return f"{type(exc).__name__}: {redact(str(exc))}"


class VaelabError(Exception):
    """An error the user can fix; stages print its message and exit non-zero."""


class ParamsError(VaelabError):
    """params.yaml is missing, unreadable or invalid."""


class DataFileError(VaelabError):
    """A data file is corrupted, truncated or not what it claims to be."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}. {fix}")
        self.path = path


class FetchError(VaelabError):
    """No source could deliver a verified copy of a dataset file."""


DIVERGED = "error: training diverged:"  # how the train stage's exit line starts, for a runner


class TrainingDiverged(VaelabError):
    """The loss became NaN or infinite: an outcome of the settings, not a fault."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{DIVERGED.removeprefix('error: ')} {detail}")
