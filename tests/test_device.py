"""``--device auto`` (the default everywhere): the first visible CUDA device, else the CPU.

These machines have no GPU, so auto must resolve to cpu; the CUDA branch is checked by making
torch report one (nothing runs on it).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from avvp_pipe.core.device import DeviceError, require_device, resolve_device
from avvp_pipe.core.errors import EXIT_USAGE


def test_auto_resolves_to_cpu_without_cuda():
    assert not torch.cuda.is_available()
    assert resolve_device() == resolve_device("auto") == require_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # names pass through


def test_auto_takes_cuda_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"  # unnumbered: dask workers map it to their own GPU
    assert resolve_device("cpu") == "cpu"  # --device cpu still forces the CPU


def test_bad_or_absent_devices_are_one_line_usage_errors():
    with pytest.raises(DeviceError, match="expected auto") as bad:
        resolve_device("gpu")
    assert bad.value.exit_code == EXIT_USAGE
    with pytest.raises(DeviceError, match="no CUDA device is visible here"):
        require_device("cuda")


def test_library_defaults_resolve_auto():
    from avvp_pipe.pipeline.extract.plan import ExtractOptions
    from avvp_pipe.pipeline.train.config import TrainConfig

    assert TrainConfig().device == "cpu"  # resolved once, so config.json says which device ran
    assert ExtractOptions(extractors=("vggish",)).device == "auto"  # run_extract resolves (workers may differ)
    with pytest.raises(DeviceError):
        ExtractOptions(extractors=("vggish",), device="gpu")


@pytest.mark.parametrize("command", [["extract"], ["train"], ["select"], ["analyze", "features"], ["analyze", "run"], ["analyze", "probe"]])
def test_every_command_defaults_to_auto(command):
    from avvp_pipe.pipeline.cli import cli

    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "auto (the first visible CUDA device, else cpu)" in " ".join(result.output.split())
    assert "[default: auto]" in result.output
