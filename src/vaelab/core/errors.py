"""User-facing errors: each message says what is wrong and what to do about it."""


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
