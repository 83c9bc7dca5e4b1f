"""How many floats autograd keeps for a backward pass: two independent counts.

`graph_saved_floats(outputs)` walks the autograd graph behind `outputs` after the
forward pass and adds up the tensors its nodes saved; it needs no hooks, so it works
whatever func does inside (torch.func transforms refuse saved-tensor hooks).
`saved_floats()` counts with saved-tensor hooks while the forward pass runs. Both count
each storage once and leave out leaf tensors that require grad (parameters, which exist
anyway) and 0-dim tensors.
"""
from __future__ import annotations

import torch

_SAVED_NAMES: dict[str, tuple] = {}    # node type -> names of its saved-tensor attributes


def _saved_names(node) -> tuple:
    kind = type(node).__name__
    if kind not in _SAVED_NAMES:
        _SAVED_NAMES[kind] = tuple(name for name in dir(node) if name.startswith("_saved_"))
    return _SAVED_NAMES[kind]


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _node_saved(node) -> list:
    """Tensors a node saved: built-in nodes expose them as _saved_* attributes, custom
    Functions as saved_tensors."""
    found = []
    for name in _saved_names(node):
        try:
            found += _tensors(getattr(node, name))
        except RuntimeError:          # freed by an earlier backward pass
            pass
    if hasattr(node, "saved_tensors"):
        try:
            found += list(node.saved_tensors)
        except RuntimeError:
            pass
    return found


def graph_saved_floats(*outputs: torch.Tensor) -> int:
    """Floats saved by the autograd graph behind `outputs` (each storage once, parameters
    excluded). Costs one visit per graph node; call it before the backward pass frees
    the saved tensors."""
    seen_nodes, seen_storages, floats = set(), set(), 0
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        for tensor in _node_saved(node):
            floats += _count(tensor, seen_storages)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return floats


def _count(tensor: torch.Tensor, seen: set) -> int:
    """Floats of tensor's storage if not seen yet; 0 for parameters and for 0-dim tensors
    (scalars multiplied in, which the graph re-materialises on every access)."""
    if (tensor.is_leaf and tensor.requires_grad) or tensor.dim() == 0:
        return 0
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen:
        return 0
    seen.add(storage.data_ptr())
    return storage.nbytes() // tensor.element_size()


class saved_floats:
    """Context manager counting the floats autograd saves for the backward pass inside
    it, with saved-tensor hooks (torch.func transforms inside it then raise: use
    graph_saved_floats for those). Hooks already active outside (offloading,
    checkpointing) keep working: the count is taken on the way to them. `.floats` holds
    the count on exit.

        with saved_floats() as saved:
            loss = model(x)
        print(saved.floats)
    """

    def __init__(self):
        self.floats, self._seen = 0, set()
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)(False)
        self._outer_pack, self._outer_unpack = top if top is not None else (None, None)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        self.floats += _count(tensor, self._seen)
        return tensor if self._outer_pack is None else self._outer_pack(tensor)

    def _unpack(self, packed):
        return packed if self._outer_unpack is None else self._outer_unpack(packed)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
