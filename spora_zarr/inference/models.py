"""Load the model of a prediction: a TorchScript file, an importable ``module:callable``, or an object.

A model maps a float32 batch ``(B, C, T, T)`` to ``(B, K, T, T)`` (or
``(B, T, T)``, read as ``K = 1``). ``module:name`` resolves ``name`` in the
imported module: an ``nn.Module`` instance is the model, a class is
instantiated with no arguments, any other callable is applied to batches as
it is. Loaded models are cached per process by their spec, so a runner worker
loads a model once for all its tissues.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidInputError, NotFoundError

__all__ = ["Model", "load_model", "model_channel_names", "model_label"]

Model = Callable[[Any], Any]
_CACHE: dict[tuple[int, str, str], Model] = {}


def model_label(model: str | Model) -> str:
    """How errors name a model: its spec, or its class name."""
    return model if isinstance(model, str) else type(model).__name__


def load_model(model: str | Model, device: str = "cpu") -> Model:
    """The model ``model`` names, on ``device``, in eval mode.

    Raises
    ------
    NotFoundError
        A model file or module that does not exist.
    InvalidInputError
        A file that does not load as TorchScript, or a name that is not callable.
    """
    import torch

    if not isinstance(model, str):
        if not callable(model):
            raise InvalidInputError(f"model {model_label(model)}: not callable")
        return _prepare(model, device)
    key = (os.getpid(), model, str(device))
    if key in _CACHE:
        return _CACHE[key]
    if os.path.exists(model):
        try:
            loaded: Model = torch.jit.load(model, map_location=device)
        except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for a bad file
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(f"model {model}: does not load as a TorchScript file ({text[:200]})") from None
    elif ":" in model and not model.endswith((".pt", ".pth", ".ts")):
        loaded = _import(model)
    else:
        raise NotFoundError(f"model {model}: no such file (give a TorchScript file or module:callable)")
    _CACHE[key] = _prepare(loaded, device)
    return _CACHE[key]


def _import(spec: str) -> Model:

    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(f"model {spec}: cannot import module {module_name!r} ({exc})") from None
    try:
        target = getattr(module, name)
    except AttributeError:
        raise NotFoundError(f"model {spec}: module {module_name!r} has no {name!r}") from None
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:  # a constructor that needs arguments or fails
            raise InvalidInputError(f"model {spec}: cannot instantiate {name} with no arguments ({exc})") from None
    if not callable(target):
        raise InvalidInputError(f"model {spec}: {name!r} is not callable")
    return target


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
