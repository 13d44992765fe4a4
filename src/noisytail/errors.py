"""Expected failures (bad data, bad params, missing files or services) and how stages report them.

A user who points noisytail at a folder with an empty class or a misspelt parameter needs one
line that names the file, row or key, not a traceback: every stage and command runs under
``report_expected_errors``, which prints ``error: ...`` and exits with status 2. The traceback
comes back with ``NOISYTAIL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_STATUS = 2


class NoisytailError(Exception):
    """Base of the expected failures; each message names the file, row or parameter."""


EXPECTED_ERRORS = (NoisytailError, FileNotFoundError)


def one_line(error: BaseException) -> str:
    """The message on one line: a multi-line listing is joined with '; '."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def report_expected_errors(main: Callable[[], object]) -> None:
    """Run ``main``; an expected failure prints ``error: <message>`` and exits with status 2."""
    try:
        main()
    except EXPECTED_ERRORS as error:
        if os.environ.get("NOISYTAIL_DEBUG") == "1":
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_STATUS)
