"""Load the model of a prediction: a TorchScript file, an importable ``module:callable``, or an object.

A model maps a float32 batch ``(B, C, T, T)`` to ``(B, K, T, T)`` (or
``(B, T, T)``, read as ``K = 1``). ``module:name`` resolves ``name`` in the
imported module: an ``nn.Module`` instance is the model, a class is
instantiated with no arguments, any other callable is applied to batches as
it is. Loaded models are cached per process by their spec (and a file's
modification time and size: a file saved again is loaded again), so a runner
worker loads a model once for all its tissues.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidInputError, NotFoundError, reason
from ..process import PerProcess

__all__ = ["Model", "check_device", "load_model", "model_channel_names", "model_digest", "model_label"]

Model = Callable[[Any], Any]
# loaded models by (name, device, file stamp) and file digests by (path, stamp): a file saved again is loaded again
_CACHE: PerProcess[dict[tuple[str, str, tuple[int, int] | None], Model]] = PerProcess(dict)
_DIGESTS: PerProcess[dict[tuple[str, tuple[int, int]], str]] = PerProcess(dict)


def model_label(model: str | Model) -> str:
    """How errors name a model: its spec, a function's name, or its class name."""
    if isinstance(model, str):
        return model
    return str(getattr(model, "__qualname__", None) or type(model).__name__)


def load_model(model: str | Model, device: str = "cpu") -> Model:
    """The model ``model`` names, on ``device``, in eval mode.

    Raises
    ------
    NotFoundError
        A model file or module that does not exist.
    InvalidInputError
        A file that does not load as TorchScript, a name that is not callable,
        or a device this machine does not have (:func:`check_device`).
    """
    import torch

    check_device(device)
    if not isinstance(model, str):
        if not callable(model):
            raise InvalidInputError(f"model {model_label(model)}: not callable")
        return _prepare(model, device)
    cache = _CACHE.get()
    key = (model, str(device), _stamp(model))
    if key in cache:
        return cache[key]
    if os.path.exists(model):
        try:
            loaded: Model = torch.jit.load(model, map_location=device)
        except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for a bad file
            raise InvalidInputError(f"model {model}: does not load as a TorchScript file ({reason(exc)})") from None
    elif ":" in model and not model.endswith((".pt", ".pth", ".ts")):
        loaded = _import(model)
    else:
        raise NotFoundError(f"model {model}: no such file (give a TorchScript file or module:callable)")
    for older in [k for k in cache if k[:2] == key[:2]]:  # the same file saved before: not used again
        del cache[older]
    cache[key] = _prepare(loaded, device)
    return cache[key]


def model_digest(model: str | Model) -> str | None:
    """The SHA-1 of a model file's bytes (what a prediction records to know its model); ``None`` for other models."""
    if not isinstance(model, str):
        return None
    stamp = _stamp(model)
    if stamp is None:
        return None
    digests = _DIGESTS.get()
    key = (str(model), stamp)
    if key not in digests:
        digest = hashlib.sha1(usedforsecurity=False)
        with open(model, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        digests[key] = digest.hexdigest()
    return digests[key]


def _stamp(model: str) -> tuple[int, int] | None:
    """A model file's modification time and size; ``None`` for a spec that is no regular file."""
    try:
        status = os.stat(model)
    except (OSError, ValueError):
        return None
    return (status.st_mtime_ns, status.st_size) if stat.S_ISREG(status.st_mode) else None


def check_device(device: str) -> None:
    """Refuse a torch device that is not a device name, or that this machine does not have (``cuda`` without CUDA)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"device {device!r}: not a torch device ({reason(exc)})") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InvalidInputError(f"device {device!r}: CUDA is not available ({built}); use device='cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise InvalidInputError(f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device!r}: Apple MPS is not available on this machine; use device='cpu'")


def _import(spec: str) -> Model:

    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(f"model {spec}: cannot import module {module_name!r} ({reason(exc)})") from None
    except Exception as exc:  # the module's own code failed at import (a syntax error, a failing top-level call)
        raise InvalidInputError(f"model {spec}: importing module {module_name!r} failed ({type(exc).__name__}: {reason(exc)})") from None
    try:
        target = getattr(module, name)
    except AttributeError:
        raise NotFoundError(f"model {spec}: module {module_name!r} has no {name!r}") from None
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:  # a constructor that needs arguments or fails
            raise InvalidInputError(f"model {spec}: cannot instantiate {name} with no arguments ({reason(exc)})") from None
    if not callable(target):
        raise InvalidInputError(f"model {spec}: {name!r} is not callable")
    model: Model = target
    return model


def _prepare(model: Model, device: str) -> Model:
    import torch

    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    return model


def model_channel_names(model: Model) -> Sequence[str] | None:
    """The ``channel_names`` a model declares (an attribute of it), if any."""
    names = getattr(model, "channel_names", None)
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None
