"""Writing outputs so that no reader, and no interrupted run, ever leaves half a file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from nxcompile.errors import UsageError


def write_atomically(path: Path, write: Callable[[Path], None], hint: str,
                     errors: tuple[type[BaseException], ...] = (OSError,), suffix: str = ".tmp") -> None:
    """`write` fills a temporary file beside `path`, which is then renamed onto it.
    On failure the temporary file is removed and one line says what to do (`hint`)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        write(tmp)
        tmp.replace(path)
    except errors as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path} ({exc}); {hint}") from exc
    except BaseException:          # Ctrl-C or any other failure mid-write: no half file stays behind
        tmp.unlink(missing_ok=True)
        raise


def save_figure(fig, path: Path, hint: str = "choose a writable --plot path", dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written to a temporary name and renamed: never half a plot."""
    import matplotlib.pyplot as plt

    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), hint,
                         suffix=".tmp.png")
    finally:
        plt.close(fig)
