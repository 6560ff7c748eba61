"""Tensor files (checkpoints, pretrained weights) read from bytes, without running code from them."""

from __future__ import annotations

import io
from typing import Any

from minseg.enums import WeightFormat
from minseg.errors import InputError


def load_tensor_file(data: bytes, uri: str, kind: str, error: type[InputError] = InputError,
                     advice: str = "") -> Any:
    """What a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` file holds (``torch.load(weights_only=True)``: tensors and
    plain containers, no code runs) or a ``.safetensors`` file's tensors, on the CPU; the format is told by the
    suffix of ``uri`` (``WeightFormat.of``).

    ``kind`` names the file in the error (``checkpoint file``, ``weights file``); ``advice`` follows it.

    Raises:
        error: the bytes are not such a file (empty, cut short by a full disk or a killed copy, another format),
            naming ``uri``, the reader's own reason and the size: torch raises EOFError, RuntimeError,
            UnpicklingError and more, none of which names the file.
    """
    try:
        if WeightFormat.of(uri) is WeightFormat.SAFETENSORS:
            from safetensors.torch import load as load_safetensors

            return load_safetensors(data)
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = f"{load_failure(exc)}; {len(data)} bytes"
        raise error(f"{uri}: not a readable {kind} ({reason}){'; ' + advice if advice else ''}") from None


def load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line: ``UnpicklingError: Unsupported operand 206``.
    Torch's own first line for a file that is not tensors advises loading it again with ``weights_only=False``,
    which runs whatever code the file holds: a damaged or foreign file is never worth that, so it is not passed on
    (minseg reads tensors only)."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        detail = " ".join(detail.split("Check the documentation", 1)[0].split())
        return (f"{type(exc).__name__}: not a file of tensors only{' (' + detail + ')' if detail else ''}; minseg "
                "never loads one that could run code")
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
