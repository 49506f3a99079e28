"""Turn whatever a module returns into named tensors to bin.

Modules return tensors, tuples and lists (LSTMs), dicts and dataclass-like
``ModelOutput`` objects (Hugging Face), or None. :func:`flatten` walks that
structure in a stable order and yields ``(path, tensor)`` pairs; a plain tensor
has the empty path. Anything else (ints, strings, None) yields nothing. A
``PackedSequence`` (an LSTM fed packed sequences) is its values: its batch sizes
and sort indices are bookkeeping, not activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

_MAX_DEPTH = 4


def flatten(out: Any, path: tuple = (), depth: int = 0) -> Iterator[tuple[tuple, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor inside ``out``.

    Example:
        >>> [p for p, _ in flatten((torch.zeros(1), (torch.zeros(1), None)))]
        [(0,), (1, 0)]
    """
    if isinstance(out, torch.Tensor):
        yield path, out
    elif isinstance(out, PackedSequence):  # a tuple, but only its values are activations
        yield path, out.data
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from flatten(v, (*path, k), depth + 1)
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            yield from flatten(v, (*path, i), depth + 1)


def is_main(path: tuple) -> bool:
    """Whether ``path`` leads to a module's main output: itself, or the first item of a tuple/list, recursively.

    An LSTM's output sequence, an attention module's attention output: recorded under the module's own name.

    Example:
        >>> is_main(()), is_main((0,)), is_main((0, 0)), is_main((1, 0)), is_main(("a",))
        (True, True, True, False, False)
    """
    return all(type(p) is int and p == 0 for p in path)


def path_name(base: str, path: tuple) -> str:
    """Qualified record name: ``lstm`` + ``(1, 0)`` -> ``lstm.1.0``."""
    return ".".join([base, *map(str, path)]) if path else base
