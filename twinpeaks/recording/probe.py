"""Layers that leaf hooks miss: modules whose children never run through their own forward.

``nn.MultiheadAttention`` computes with its ``out_proj`` weights through
``F.multi_head_attention_forward`` and never calls ``out_proj``; an
``EmbeddingDropout`` calls ``F.embedding`` with its child's weights. Hooks on
leaves see nothing of them. The rule, for any module: a module that ran although
none of its descendants' forwards ran inside it is one layer (its output; the
first tensor of a tuple, see :func:`twinpeaks.outputs.is_main`), and its
descendants, which never ran, are part of it rather than "never called".

Design constraints:

* Found by watching, not by class names: during the first step a pre-hook on
  every module counts forward calls; a candidate (a module with children, not a
  container, not the model itself) whose calls saw no other pre-hook fire inside
  them is such a layer. Its outputs of that first step are binned as they come
  (``on_layer``), so no step is lost.
* The probe ends with the first step (:meth:`CompositeProbe.finish`): its hooks
  are removed and the found layers get the recorder's ordinary hook, so the hot
  path afterwards is the same as for any layer. What the first step did not run
  is decided as it stands then: a module that first runs later, and only then
  without its children, is not found (name it with ``modules=``).
* Under ``torch.compile`` the hooks do nothing (``is_compiling``): a first step
  that is traced finds nothing, and the inert hooks stay so that the graph is not
  compiled a second time. Name such layers with ``modules=`` to record them there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .selection import CopySafe


class CompositeProbe:
    """Watches the first step for modules that ran while none of their descendants did.

    ``on_layer(name, module, out)`` is called for every such call, with the module's output.
    """

    def __init__(self, root: nn.Module, candidates: dict[int, str], on_layer: Callable[[str, nn.Module, Any], None]):
        self.root = root
        self.on_layer = on_layer
        #: id -> layer name of the modules that may be such a layer (see :func:`.selection.composite_candidates`)
        self.candidates = candidates
        self.calls = 0
        self.traced = False
        self._entries: dict[int, list[int]] = {}
        self.alone: dict[int, nn.Module] = {}  # candidates with a call in which no descendant ran
        self.with_children: set[int] = set()  # candidates with a call in which a descendant ran
        self._handles: list[Any] = []
        for m in {id(m): m for m in root.modules()}.values():
            if isinstance(m, torch.jit.ScriptModule):  # takes no hooks (and its inside runs in TorchScript)
                continue
            self._handles.append(m.register_forward_pre_hook(CopySafe(self._pre)))
            if id(m) in self.candidates:
                self._handles.append(m.register_forward_hook(CopySafe(self._post)))

    def _pre(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            self.traced = True
            return
        self.calls += 1
        if id(module) in self.candidates:
            self._entries.setdefault(id(module), []).append(self.calls)

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            return
        entries = self._entries.get(id(module))
        if not entries:
            return
        if entries.pop() == self.calls:  # no pre-hook fired since this module's own: no descendant ran
            self.alone[id(module)] = module
            self.on_layer(self.candidates[id(module)], module, out)
        else:
            self.with_children.add(id(module))

    def finish(self) -> list[tuple[str, nn.Module]]:
        """End the probe; the layers found, in the model's order (outermost first).

        The hooks are removed, unless the first step was traced by ``torch.compile``
        (removing them would compile the graph again; they do nothing there).
        """
        if not self.traced:
            for h in self._handles:
                h.remove()
        self._handles = [] if not self.traced else self._handles
        found = [(self.candidates[i], m) for i, m in self.alone.items()]
        order = {id(m): k for k, m in enumerate(self.root.modules())}
        return sorted(found, key=lambda nm: order.get(id(nm[1]), 0))

    def remove(self) -> None:
        """Remove every hook of the probe (detach)."""
        for h in self._handles:
            h.remove()
        self._handles = []
