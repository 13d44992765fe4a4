"""Progress bars on a terminal only.

Under DVC, CI or ``nohup`` stderr is a file: a bar there writes one carriage-return frame per
update, and a 12-epoch log becomes one line of megabytes. Off a terminal the bars are off and
the training loop's one plain line per epoch is the log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown only when ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **kwargs)
