"""Module selection and the hook handles: which layers are recorded, under which names.

Design constraints: names are the user's qualified module names without wrapper
segments (FSDP1 units, activation checkpointing), so a wrapped and an unwrapped
model record the same layers; selection errors name the argument and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)

#: Attributes through which wrappers hold the module they wrap, left out of layer names: FSDP1 units
#: (``FullyShardedDataParallel``) and activation checkpointing (``checkpoint_wrapper``).
_WRAPPED = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def layer_name(qualified: str) -> str:
    """A module's name without wrapper segments: ``0._fsdp_wrapped_module`` -> ``0``.

    Example:
        >>> layer_name("blocks.1._checkpoint_wrapped_module.mlp")
        'blocks.1.mlp'
    """
    return ".".join(p for p in qualified.split(".") if p not in _WRAPPED)


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module by :func:`layer_name`; a wrapper and the module it wraps share a name: the module wins."""
    return {layer_name(name): m for name, m in model.named_modules()}


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every leaf module in registration order, parameter-less ones included, named without wrappers.

    Containers that cannot be called (an empty ``ModuleList``) are left out; a
    model that is itself a leaf is its own only layer.

    Example:
        >>> [n for n, _ in leaf_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
        ['0', '1']
    """
    leaves = [
        (layer_name(name), m) for name, m in model.named_modules()
        if not any(True for _ in m.children()) and not isinstance(m, _CONTAINERS) and layer_name(name)
    ]
    return leaves or [(type(model).__name__, model)]


def composite_candidates(model: nn.Module) -> dict[int, str]:
    """``id -> layer name`` of the modules that may be layers leaf hooks miss (see :mod:`.probe`).

    Modules with children, except containers and the model itself.

    Example:
        >>> list(composite_candidates(nn.Sequential(nn.MultiheadAttention(4, 2))).values())
        ['0']
    """
    return {id(m): layer_name(name) for name, m in model.named_modules()
            if m is not model and layer_name(name) and not isinstance(m, _CONTAINERS) and any(True for _ in m.children())}


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/FSDP1/``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) if isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else None
        inner = inner or getattr(model, "_orig_mod", None) or getattr(model, "_fsdp_wrapped_module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def select_modules(root: nn.Module, modules: Sequence[str | int] | str | int | None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that ``modules=`` selects, in the model's order, each once.

    Example:
        >>> [n for n, _ in select_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), [-1])]
        ['1']
    """
    leaves = leaf_modules(root)
    if modules is None:
        return leaves
    if isinstance(modules, (str, int)):
        modules = [modules]
    by_name = named_modules(root)
    picked: list[tuple[str, nn.Module]] = []
    for m in modules:
        if isinstance(m, bool) or not isinstance(m, (str, int)):
            raise TypeError(f"modules must hold qualified names or int indices, got {m!r}")
        if isinstance(m, int):
            if not -len(leaves) <= m < len(leaves):
                raise ValueError(f"modules index {m} is out of range: the model has {len(leaves)} leaf modules")
            picked.append(leaves[m])
        elif m in by_name and m:
            picked.append((m, by_name[m]))
        else:
            names = ", ".join(repr(n) for n, _ in leaves[:6])
            raise ValueError(f"modules: no module named {m!r} in the model; leaf modules are {names}, ...")
    order = {id(mod): i for i, (_, mod) in enumerate(root.named_modules())}
    picked = list({id(mod): (n, mod) for n, mod in picked}.values())
    return sorted(picked, key=lambda nm: order.get(id(nm[1]), 0))


class Hooks:
    """The hook handles of one recorder: registered together, removed together."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self._handles)

    def register(self, root: nn.Module, pre_hook: Any, modules: Sequence[nn.Module], make_hook: Any) -> None:
        """A forward pre-hook on ``root`` (starts steps) and ``make_hook(i)`` as the forward hook of ``modules[i]``."""
        self._handles.append(root.register_forward_pre_hook(pre_hook))
        for i, mod in enumerate(modules):
            self._handles.append(mod.register_forward_hook(make_hook(i)))

    def add(self, module: nn.Module, hook: Any) -> None:
        """One more forward hook (a layer found after :meth:`register`), removed with the others."""
        self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
