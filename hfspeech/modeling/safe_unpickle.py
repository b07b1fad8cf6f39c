"""Restricted loading of fairseq ``.pt`` checkpoints: tensors and plain data, never code.

A fairseq checkpoint is a pickle holding, besides the tensors, the run's configuration as an
``argparse.Namespace`` (older files), an omegaconf ``DictConfig`` or a plain dict, and task
state such as the target ``fairseq.data.dictionary.Dictionary``. Unpickling it with plain
``torch.load(weights_only=False)`` would import fairseq/omegaconf and run whatever callables
the file names (a crafted file can name ``os.system``).

`load_fairseq_checkpoint` unpickles through `RestrictedUnpickler`, whose ``find_class``
resolves a global only when it is

* needed to rebuild tensors and containers (``torch._utils._rebuild_tensor_v2``, dtypes,
  ``collections.OrderedDict``, plain builtin types, NumPy arrays/scalars), or
* a configuration class -- ``argparse.Namespace``, anything under ``omegaconf.`` or
  ``fairseq.`` (config nodes and metadata, enums such as fairseq's ``ChoiceEnum`` values,
  dictionaries, meters) -- which is replaced by an inert `PickledRecord` that only stores
  the pickled arguments and state; neither fairseq nor omegaconf is imported or called.

Every other global raises `ForbiddenGlobalError` naming it. After loading, `to_plain_data`
turns the records into dicts, lists and scalars (a ``DictConfig`` becomes a dict, a
``Namespace`` a dict, an enum member its value).
"""

from __future__ import annotations

import _compat_pickle
import collections
import importlib
import pickle
import types
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["ForbiddenGlobalError", "PickledRecord", "RestrictedUnpickler", "load_fairseq_checkpoint",
           "to_plain_data"]


class ForbiddenGlobalError(ValueError):
    """A pickle names a global (class or function) outside the allow-list; nothing was executed."""

    def __init__(self, qualified_name: str, source: str | None = None) -> None:
        self.qualified_name = qualified_name
        super().__init__(
            (f"{source}: " if source else "") + f"refused to unpickle the global {qualified_name!r}: only tensors "
            "and plain configuration data (argparse/omegaconf/fairseq objects, rebuilt as data) are loaded from "
            "fairseq checkpoints, because "
            "any other global may run code while unpickling. If you trust this file, load it with fairseq and "
            "save {'cfg': ..., 'model': model.state_dict()} with plain containers, then convert that."
        )


class PickledRecord:
    """Inert stand-in for an instance of a configuration class named in a pickle.

    Subclassed once per class name (`qualified_name`); unpickling calls ``__new__``/``__init__``
    with the pickled arguments and ``__setstate__`` with the pickled state, which are only stored.
    """

    qualified_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledRecord":
        record = object.__new__(cls)
        record.__dict__.update(args=args, kwargs=kwargs, state=None, items=[], entries={})
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on dict-like classes
        self.entries[key] = value

    def append(self, value: Any) -> None:  # APPENDS on list-like classes
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"PickledRecord({self.qualified_name})"


_RECORD_CLASSES: dict[str, type[PickledRecord]] = {}


def _record_class(qualified_name: str) -> type[PickledRecord]:
    if qualified_name not in _RECORD_CLASSES:
        _RECORD_CLASSES[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (PickledRecord,),
            {"qualified_name": qualified_name, "__module__": __name__},
        )
    return _RECORD_CLASSES[qualified_name]


def _is_config_class(module: str, name: str) -> bool:
    """Classes rebuilt as records: fairseq's and omegaconf's objects and ``argparse.Namespace``."""
    return (module == "argparse" and name == "Namespace") or module.split(".")[0] in ("fairseq", "omegaconf")


def _attribute(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


def _numpy_attribute(submodule: str, name: str) -> Callable[[], Any]:
    """NumPy 1 pickles ``numpy.core.*``, NumPy 2 ``numpy._core.*``; resolve either on this NumPy."""

    def resolve() -> Any:
        for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise ForbiddenGlobalError(f"numpy.core.{submodule}.{name} (not found in this NumPy)")

    return resolve


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> PickledRecord:
    """``copyreg._reconstructor`` (protocols 0/1) restricted to record classes."""
    if not (isinstance(cls, type) and issubclass(cls, PickledRecord)):
        raise ForbiddenGlobalError(f"copyreg._reconstructor applied to {cls!r}")
    record = cls()
    record.__dict__["args"] = (state,) if state is not None else ()
    return record


# Globals resolved to the real object: what torch.save / pickle need for tensors and containers.
_ALLOWED_GLOBALS: dict[str, Callable[[], Any]] = {
    **{f"torch._utils.{name}": _attribute("torch._utils", name) for name in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state")},
    "torch.Size": lambda: torch.Size,
    "torch.device": lambda: torch.device,
    "collections.OrderedDict": lambda: collections.OrderedDict,
    "collections.Counter": lambda: collections.Counter,
    "collections.defaultdict": lambda: collections.defaultdict,  # omegaconf's resolver cache
    "_codecs.encode": _attribute("_codecs", "encode"),  # bytes under pickle protocol 2
    "typing.Any": _attribute("typing", "Any"),  # omegaconf metadata
    "copyreg._reconstructor": lambda: _safe_reconstructor,
    **{f"builtins.{name}": _attribute("builtins", name) for name in (
        "set", "frozenset", "bytearray", "bytes", "slice", "complex", "dict", "list", "tuple", "str", "int",
        "float", "bool", "object")},
    **{f"numpy.{core}.multiarray.{name}": _numpy_attribute("multiarray", name)
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    "numpy.ndarray": _attribute("numpy", "ndarray"),
    "numpy.dtype": _attribute("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` allows only the globals described in the module docstring."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2 names (``__builtin__.set``, ``copy_reg``): map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified_name = f"{module}.{name}"
        if qualified_name in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[qualified_name]()
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):  # NumPy 2 dtype classes
            return _attribute("numpy.dtypes", name)()
        if _is_config_class(module, name):
            return _record_class(qualified_name)
        raise ForbiddenGlobalError(qualified_name)


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) needs: Unpickler (subclassed by torch) and load.
RESTRICTED_PICKLE_MODULE = types.ModuleType("hfspeech_restricted_pickle")
RESTRICTED_PICKLE_MODULE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE_MODULE.load = _load


def to_plain_data(value: Any, _seen: dict[int, Any] | None = None) -> Any:
    """Replace records by plain data, recursively (tensors are kept as they are).

    ``Namespace`` -> dict of its attributes; ``DictConfig`` -> dict; ``ListConfig`` -> list;
    omegaconf value nodes -> their value; an object pickled as ``cls(value)`` (enum members) ->
    ``value``; other fairseq objects -> dict of their state plus ``"__class__"``.
    """
    seen = {} if _seen is None else _seen
    if isinstance(value, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return value
    if id(value) in seen:  # shared or cyclic reference
        return seen[id(value)]
    if isinstance(value, PickledRecord):
        seen[id(value)] = None  # a cycle back into this record reads as None
        result = _record_to_plain(value, seen)
    elif isinstance(value, dict):
        result = {to_plain_data(key, seen): to_plain_data(item, seen) for key, item in value.items()}
    elif isinstance(value, (list, tuple)):
        result = type(value)(to_plain_data(item, seen) for item in value) if not hasattr(value, "_fields") \
            else value
    else:
        result = value
    seen[id(value)] = result
    return result


def _record_to_plain(record: PickledRecord, seen: dict[int, Any]) -> Any:
    name = record.qualified_name
    state = record.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots) state
        state = {**(state[0] or {}), **state[1]}
    if name.startswith("omegaconf."):
        if not isinstance(state, dict):
            return None
        if name.endswith("DictConfig") or name.endswith("ListConfig"):
            return to_plain_data(state.get("_content"), seen)
        if name.endswith("Node"):
            return to_plain_data(state.get("_val"), seen)
        return {key: to_plain_data(item, seen) for key, item in state.items() if key != "_parent"}
    if state is None and not record.entries and not record.items and len(record.args) == 1:
        return to_plain_data(record.args[0], seen)  # enum member / single-value object
    plain: dict[str, Any] = {}
    if name != "argparse.Namespace":
        plain["__class__"] = name
    if isinstance(state, dict):
        plain.update({str(key): to_plain_data(item, seen) for key, item in state.items()})
    elif state is not None:
        plain["__state__"] = to_plain_data(state, seen)
    if record.entries:
        plain["__entries__"] = to_plain_data(record.entries, seen)
    if record.items:
        plain["__items__"] = to_plain_data(record.items, seen)
    return plain


def load_fairseq_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a fairseq checkpoint with `RestrictedUnpickler`; return it as plain data (tensors on CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ForbiddenGlobalError: the pickle names a global outside the allow-list (named in the message).
        ValueError: the file is not a torch-saved dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the path of a fairseq checkpoint (.pt).")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE_MODULE)
    except ForbiddenGlobalError as error:
        raise ForbiddenGlobalError(error.qualified_name, source=str(path)) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    checkpoint = to_plain_data(loaded)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a fairseq checkpoint dict with 'model'.")
    return checkpoint
