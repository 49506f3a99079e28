"""Module selection and the hook handles: which layers are recorded, under which names.

Design constraints: names are the user's qualified module names without wrapper
segments (FSDP1 units, activation checkpointing), so a wrapped and an unwrapped
model record the same layers; selection errors name the argument and the fix.
"""

from __future__ import annotations

import operator
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


class RecordNames:
    """Names of records, unique by construction.

    A tuple output's item ``0`` of module ``0`` is ``0.0``, as is a child module
    named ``0.0``; a dict output ``{1: x, "1": y}`` gives ``.1`` twice; the
    ``output`` record may meet a module named ``output``. A name already taken
    (by a record, or, for anything but a module's own record, by any module of
    the model) gets ``~1``, ``~2``, ... until it is free, so no record ever
    replaces another.

    Example:
        >>> names = RecordNames(nn.Sequential(nn.Linear(2, 2)))
        >>> names.take("0", module=True), names.take("0"), names.take("x"), names.take("x")
        ('0', '0~1', 'x', 'x~1')
    """

    def __init__(self, root: nn.Module):
        self._modules = set(named_modules(root))
        self._taken: set[str] = set()

    def take(self, name: str, module: bool = False) -> str:
        """A free name for a record, based on ``name``; ``module``: the record of that very module."""
        out, k = name, 0
        while out in self._taken or (not module and out in self._modules):
            k += 1
            out = f"{name}~{k}"
        self._taken.add(out)
        return out


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


class Tap:
    """A layer's ``forward``, wrapped: calls it, then ``hook(module, args, out)``; set on the instance.

    Why not a forward hook: once a module has any forward hook, every call of it takes torch's
    slower ``_call_impl`` path (about 1.8 us per call on CPU, measured: 1.09x on a 9.6 ms step of
    501 layers), while an instance ``forward`` keeps the fast path (no measurable cost). The tap
    sees the forward's own output (before other forward hooks, which run after it). A copy of the
    module (``copy.deepcopy``, an EMA model) or a pickled one gets the plain forward back, not the
    tap: it is not recorded, and computes what the original computes. An ``nn.DataParallel``
    replica gets taps of its own (:class:`_Replicator`): it computes with its parameters and is
    recorded, as with forward hooks.

    Example:
        >>> import torch
        >>> m = nn.Linear(2, 2)
        >>> seen = []
        >>> tap = Tap(m, lambda mod, args, out: seen.append(out.shape))
        >>> _ = m(torch.zeros(1, 2)); tap.remove(); _ = m(torch.zeros(1, 2))
        >>> seen
        [torch.Size([1, 2])]
    """

    __slots__ = ("module", "hook", "pre", "forward", "prev", "__wrapped__", "replicator")
    module: nn.Module
    hook: Any
    pre: Any
    forward: Any
    prev: Any
    replicator: _Replicator | None

    def __init__(self, module: nn.Module, hook: Any = None, pre: Any = None):
        self._set(module, hook, pre, module.forward, module.__dict__.get("forward"))
        module.forward = self  # type: ignore[method-assign]
        if module.__dict__.get("forward") is not self:
            raise TypeError(f"{type(module).__name__}.forward cannot be set on the instance")
        self.replicator = _Replicator(module)
        if "_replicate_for_data_parallel" not in module.__dict__:
            module.__dict__["_replicate_for_data_parallel"] = self.replicator

    def reinstall(self, hook: Any = None, pre: Any = None) -> bool:
        """Put this removed tap back with ``hook`` and ``pre``, if its module is as the tap found it (no instance
        forward, the class's own ``forward``): attaching again then makes no new objects. False: not put back."""
        m = self.module
        d = m.__dict__
        fwd = self.forward
        if (self.replicator is None or self.hook is not None or self.pre is not None or self.prev is not None
                or "forward" in d
                or "_replicate_for_data_parallel" in d or getattr(fwd, "__self__", None) is not m
                or getattr(fwd, "__func__", None) is not getattr(type(m), "forward", None)):
            return False
        self.hook, self.pre = hook, pre
        d["forward"] = self
        d["_replicate_for_data_parallel"] = self.replicator
        return True

    def _set(self, module: nn.Module, hook: Any, pre: Any, forward: Any, prev: Any) -> None:
        self.replicator = None
        self.module = module
        self.hook = hook
        self.pre = pre  # ``pre(module, args)`` before the forward, as a forward pre-hook
        self.prev = prev  # the instance forward that was there (another wrapper), or None: the class's
        self.forward = forward
        self.__wrapped__ = forward  # inspect.signature(module.forward) stays the layer's

    @classmethod
    def over(cls, module: nn.Module, hook: Any, pre: Any, forward: Any, prev: Any) -> Tap:
        """A tap on ``module`` calling ``forward``, not installed (a replica's: see :class:`_Replicator`)."""
        tap = cls.__new__(cls)
        tap._set(module, hook, pre, forward, prev)
        return tap

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.pre is not None:
            self.pre(self.module, args)
        out = self.forward(*args, **kwargs)
        hook = self.hook
        if hook is not None:
            hook(self.module, args, out)
        return out

    def __reduce__(self) -> tuple:
        # a copy of the module gets its own plain forward (the class's, bound to the copy), or the
        # instance forward it had before the tap: never this tap (it would run the original module)
        prev = _live(self.prev)
        if prev is not None:
            return (operator.itemgetter(0), ((prev,),))
        return (getattr, (self.module, "forward"))

    def remove(self) -> None:
        """Put the layer's forward back; a tap another wrapper wrapped since stays, as a pass-through."""
        self.hook = self.pre = None
        m = self.module
        if m.__dict__.get("forward") is self:
            prev = _live(self.prev)
            if prev is None:
                del m.__dict__["forward"]
            else:
                m.__dict__["forward"] = prev
        if not isinstance(m.__dict__.get("forward"), Tap) and isinstance(
                m.__dict__.get("_replicate_for_data_parallel"), _Replicator):
            del m.__dict__["_replicate_for_data_parallel"]


class _Replicator:
    """A tapped module's own ``_replicate_for_data_parallel``: its ``nn.DataParallel`` replicas get taps of
    their own.

    A replica starts as a copy of the module's ``__dict__``, so it would hold the module's tap, which
    calls the module's own forward (its parameters, on the first device). Here every live tap is made
    again over the replica's forward: the replica computes with its parameters and is recorded, as
    forward hooks (copied to replicas) recorded it.
    """

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self) -> nn.Module:
        m = self.module
        replica = type(m)._replicate_for_data_parallel(m)
        d = replica.__dict__
        d.pop("_replicate_for_data_parallel", None)
        taps: list[Tap] = []
        forward = d.get("forward")
        while isinstance(forward, Tap):
            if forward.hook is not None or forward.pre is not None:
                taps.append(forward)
            forward = forward.prev
        prev = forward  # another wrapper under the taps (made for the module: kept as it is), or None
        if prev is None:
            d.pop("forward", None)
            forward = replica.forward  # the class's, bound to the replica
        for tap in reversed(taps):
            forward = prev = Tap.over(replica, tap.hook, tap.pre, forward, prev)
        if prev is not None:
            d["forward"] = prev
        return replica

    def __reduce__(self) -> tuple:
        return (getattr, (self.module, "_replicate_for_data_parallel"))  # a copy gets the class's method


def _live(forward: Any) -> Any:
    """``forward`` without the removed taps at its top (left in place while another wrapper held them)."""
    while isinstance(forward, Tap) and forward.hook is None and forward.pre is None:
        forward = forward.prev
    return forward


def _inert(*args: Any) -> None:
    """What a copied or unpickled model gets in place of a twinpeaks forward hook: nothing."""


class CopySafe:
    """A forward (pre-)hook that a copy of the model does not take along (it gets :func:`_inert`).

    A hook holding a bound method of a recorder would make ``copy.deepcopy(model)`` copy the
    recorder (its open run file: an error) and ``torch.save(model)`` fail.

    Example:
        >>> import copy
        >>> m = nn.Linear(2, 2)
        >>> _ = m.register_forward_hook(CopySafe(lambda mod, args, out: None))
        >>> copy.deepcopy(m)._forward_hooks.popitem()[1] is _inert
        True
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple:
        return (_make_inert, ())


def _make_inert() -> Any:
    return _inert


class Hooks:
    """The hooks of one recorder: registered together, removed together.

    Layers get a :class:`Tap` (a wrapped instance ``forward``; a scripted layer called from Python
    too); a module that refuses an instance ``forward`` gets a forward hook.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._taps: dict[int, Tap] = {}  # id(module) -> its last tap: put back by the next register/add

    def __bool__(self) -> bool:
        return bool(self._handles)

    def register(self, root: nn.Module, pre_hook: Any, modules: Sequence[nn.Module], make_hook: Any) -> None:
        """``pre_hook(root, args)`` before every forward of ``root`` (starts steps) and ``make_hook(i)``
        after every forward of ``modules[i]``."""
        self._handles.append(self._tap(root, None, pre_hook) or root.register_forward_pre_hook(CopySafe(pre_hook)))
        for i, mod in enumerate(modules):
            self.add(mod, make_hook(i))

    def add(self, module: nn.Module, hook: Any) -> None:
        """One more forward hook (a layer found after :meth:`register`), removed with the others."""
        self._handles.append(self._tap(module, hook, None) or module.register_forward_hook(CopySafe(hook)))

    def _tap(self, module: nn.Module, hook: Any, pre: Any) -> Tap | None:
        old = self._taps.get(id(module))
        if old is not None and old.module is module and old.reinstall(hook, pre):
            return old
        try:
            tap = Tap(module, hook, pre)
        except (TypeError, AttributeError):
            return None
        self._taps[id(module)] = tap
        return tap

    def remove(self) -> None:
        for h in reversed(self._handles):  # taps stacked on one module come off in the reverse order
            h.remove()
        self._handles.clear()
