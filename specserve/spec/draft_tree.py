"""Candidate continuations as one token tree, flattened for verification in a single forward.

Node j has ``token_ids[j]`` and ``parents[j]`` (the index of its parent node, or -1 when its parent is
the last real token of the request). Parents always come before their children, so depth and the
tree attention mask can be built in one pass. Several candidate paths that share a prefix share its
nodes (and so its KV slots): the tree of n paths of length k has at most n * k nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class DraftTree:
    token_ids: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)

    @classmethod
    def chain(cls, token_ids: list[int]) -> DraftTree:
        return cls(list(token_ids), list(range(-1, len(token_ids) - 1)))

    @classmethod
    def from_paths(cls, paths: list[list[int]]) -> DraftTree:
        """Merge candidate paths (best first) into a trie; insertion order keeps parents first."""
        tree = cls()
        node_of: dict[tuple[int, ...], int] = {}
        for path in paths:
            parent = -1
            for depth in range(len(path)):
                key = tuple(path[:depth + 1])
                node = node_of.get(key)
                if node is None:
                    node = len(tree.token_ids)
                    node_of[key] = node
                    tree.token_ids.append(path[depth])
                    tree.parents.append(parent)
                parent = node
        return tree

    def children(self) -> list[list[int]]:
        """children()[p + 1] lists the nodes whose parent is p (index 0 = the root's children)."""
        kids: list[list[int]] = [[] for _ in range(len(self.token_ids) + 1)]
        for node, parent in enumerate(self.parents):
            kids[parent + 1].append(node)
        return kids

    def truncated(self, max_depth: int) -> DraftTree:
        """Drop nodes deeper than max_depth (keeps indices of the kept nodes consistent)."""
        if max_depth <= 0:
            return DraftTree()
        depth: list[int] = []
        remap: dict[int, int] = {-1: -1}
        out = DraftTree()
        for node, parent in enumerate(self.parents):
            d = 1 if parent < 0 else depth[parent] + 1
            depth.append(d)
            if d <= max_depth and parent in remap:
                remap[node] = len(out.token_ids)
                out.token_ids.append(self.token_ids[node])
                out.parents.append(remap[parent])
        return out
