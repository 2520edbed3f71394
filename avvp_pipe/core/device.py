"""Which torch device a run uses: ``--device auto`` (the default) and its checks, in one place.

Why a default of ``auto``: avvp-pipe is meant for GPU workstations, and a user who forgets
``--device cuda`` used to run for hours on CPU without a word. ``auto`` takes the first
visible CUDA device, else the CPU, and every run records which it was.

torch is imported inside the functions: ``avvp_pipe.core`` must stay importable without it.
"""

from __future__ import annotations

from avvp_pipe.core.errors import EXIT_USAGE, AvvpError

AUTO = "auto"
#: What ``--device`` accepts, for help texts.
DEVICE_HELP = "auto (the first visible CUDA device, else cpu), cpu, cuda or cuda:N"


class DeviceError(AvvpError):
    """``--device`` names no device torch knows, or one that is not visible here (a usage error)."""

    exit_code = EXIT_USAGE


def resolve_device(device: str | None = AUTO) -> str:
    """``auto`` (or None) becomes ``cuda`` when torch sees a CUDA device, else ``cpu``; any
    other name is checked for syntax and returned in torch's spelling (``cuda:1``, ``cpu``).

    ``cuda`` stays unnumbered on purpose: under dask each worker maps it to its own GPU
    (:func:`avvp_pipe.pipeline.extract.distributed.worker_device`); torch reads it as the
    first visible one. Whether a named CUDA device exists here is :func:`require_device`'s
    question, since a dask client may name devices that only its workers have.
    """
    import torch

    if device is None or device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {device!r}: expected {DEVICE_HELP}") from None
    return str(parsed)


def require_device(device: str | None = AUTO) -> str:
    """:func:`resolve_device`, and a one-line error when the CUDA device it names is not visible here."""
    import torch

    resolved = resolve_device(device)
    parsed = torch.device(resolved)
    if parsed.type != "cuda":
        return resolved
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {device}: no CUDA device is visible here (torch {torch.__version__}, "
                        f"CUDA build {torch.version.cuda or 'none'}); use --device auto or cpu")
    if parsed.index is not None and parsed.index >= count:
        raise DeviceError(f"--device {device}: expected cuda:0 to cuda:{count - 1} ({count} visible CUDA devices)")
    return resolved


def describe_device(device: str) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu``: what a summary says ran the numbers."""
    import torch

    parsed = torch.device(device)
    if parsed.type != "cuda" or not torch.cuda.is_available():
        return str(parsed)
    index = parsed.index if parsed.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
