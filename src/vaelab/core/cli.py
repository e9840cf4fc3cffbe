"""Run a stage or command: expected failures become one message and exit code 1."""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable

from vaelab.core import signals
from vaelab.core.backend import use_backend
from vaelab.core.errors import VaelabError, redact
from vaelab.core.params import Params, load_params
from vaelab.core.quiet_tf import import_tensorflow

# TensorFlow's informational C++ logging would bury the stage's own output; warnings and errors
# still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_message(exc: OSError) -> str:
    """What went wrong with a file, and the fix that fits the error."""
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in _SPACE:
        fix = "free disk space (or raise the file-size limit), then re-run"
    elif exc.errno in _ACCESS:
        fix = "fix the permissions or make the folder writable, then re-run"
    elif exc.errno == errno.ENOENT:
        fix = "restore it (`dvc checkout`, or `dvc repro` to rebuild what is missing)"
    else:
        fix = "fix the cause above, then re-run"
    return f"error: {where}{what}. Nothing was half-written; {fix}."


def run_command(main: Callable[[], object]) -> None:
    """Run ``main``; turn expected failures into one message on stderr and exit 1, Ctrl-C
    or SIGTERM into one line and exit 130 or 143, and a closed output pipe into exit 141."""
    signals.install()
    try:
        main()
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, signals.Terminated) else signal.SIGINT
        print(
            f"stopped by {signal.Signals(signum).name}: nothing was half-written; run the same "
            "command again to carry on (a training resumes from its last finished epoch)",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    except VaelabError as exc:
        sys.exit(f"error: {redact(str(exc))}")
    except BrokenPipeError:  # the reader left (`vaelab ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        sys.exit(128 + signal.SIGPIPE)
    except OSError as exc:  # disk full, permission denied, a missing file ...
        sys.exit(redact(os_error_message(exc)))


def training_backend(params: Params) -> str:
    """The backend the params train on (the train stage)."""
    return params.train.backend


def evaluation_backend(params: Params) -> str:
    """The backend the params evaluate and draw on (the evaluate and figures stages)."""
    return params.evaluate.backend


def tensorflow_backend(params: Params) -> str:
    """TensorFlow, whatever the params (the classifier: its features are a fixed yardstick)."""
    return "tensorflow"


def run_stage(
    main: Callable[[Params], object],
    params_file: str = "params.yaml",
    backend: Callable[[Params], str] | None = None,
) -> None:
    """Validate params.yaml, then run the stage ``main`` as `run_command` does. A stage that
    uses Keras names its backend (a function of the params); TensorFlow, which the input
    pipelines use on every backend, is imported first, quietly (see `vaelab.core.quiet_tf`)."""

    def stage() -> None:
        params = load_params(params_file)
        if backend is not None:
            use_backend(backend(params))
            import_tensorflow()
        main(params)

    run_command(stage)
