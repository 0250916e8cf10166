"""Connected components of the candidate-pair graph: which documents form one duplicate cluster, and which to drop.

Two formulations with the same output, `(nodes, labels)` where `labels[i]` is the smallest id in `nodes[i]`'s
component:

- `union_find_components`: the sequential reference (union by smaller root, path halving), for one process.
- `components_by_label_propagation`: rounds of "every node takes the smallest label among its neighbours" (a
  groupby-min over the edge list) followed by pointer jumping (`label = label[label]`, which shortens chains so that
  long paths need O(log n) rounds instead of O(n)). Each round is a join + groupby, so on Ray it runs as ordinary
  distributed dataset operations instead of funnelling every edge into one task.
"""

from __future__ import annotations

import numpy as np


def _compact(edges, nodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique node ids and the edges as indices into them: (nodes (K,), u (E,), v (E,))."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    extra = np.asarray([] if nodes is None else nodes, dtype=np.int64)
    nodes, inverse = np.unique(np.concatenate([edges.ravel(), extra]), return_inverse=True)
    uv = inverse[: edges.size].reshape(-1, 2)
    return nodes, uv[:, 0], uv[:, 1]


def union_find_components(edges, nodes=None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components by union-find.

    Args:
        edges: (E, 2) int ids (candidate pairs).
        nodes: optional extra ids, so that singletons appear in the output too.

    Returns:
        (nodes (K,), labels (K,)): the sorted unique ids and the smallest id of each one's component.
    """
    nodes, u, v = _compact(edges, nodes)
    parent = list(range(len(nodes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:  # the smaller index (= smaller id, nodes are sorted) becomes the root
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(x) for x in range(len(nodes))], dtype=np.int64)
    return nodes, nodes[roots] if len(nodes) else nodes


def components_by_label_propagation(edges, nodes=None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components by min-label propagation with pointer jumping; same output as `union_find_components`.

    Correctness: labels only move to ids of the same component and never increase, and a component's smallest id
    keeps its own label. At the fixpoint both ends of every edge have equal labels, so the label is constant on each
    component and equals that smallest id.
    """
    nodes, u, v = _compact(edges, nodes)
    label = np.arange(len(nodes))  # indices into nodes; index order is id order
    if len(u) == 0:
        return nodes, nodes
    # Directed edges grouped by source: the groupby key of every round.
    src, dst = np.concatenate([u, v]), np.concatenate([v, u])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    heads = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])  # (G,) start of each source's group
    who = src[heads]  # (G,)
    while True:
        new = label.copy()
        new[who] = np.minimum(label[who], np.minimum.reduceat(label[dst], heads))  # groupby source: min over neighbours
        while True:  # pointer jumping
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return nodes, nodes[label]
        label = new


def duplicates_to_drop(nodes, labels, priority=None) -> np.ndarray:
    """Ids to drop so that one document per component remains.

    Args:
        nodes: (K,) ids; labels: (K,) component label of each (as returned by the component functions).
        priority: optional (K,) numbers; the highest is kept (ties: the smallest id). Default: keep the smallest id.

    Returns:
        (K - #components,) int64 ids, sorted.
    """
    nodes, labels = np.asarray(nodes, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if priority is None:
        return np.sort(nodes[nodes != labels])
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != nodes.shape:
        raise ValueError(f"priority has shape {priority.shape}, expected {nodes.shape}")
    order = np.lexsort((nodes, -priority, labels))  # by component, then highest priority, then smallest id
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    return np.sort(nodes[order][~first])
