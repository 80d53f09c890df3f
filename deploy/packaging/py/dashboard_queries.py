"""The PromQL queries of a Grafana dashboard: shared by the packaging checks that read them.

queries(node, keys) yields every string under one of `keys` (e.g. "expr" for panel queries,
"definition" for template-variable queries), anywhere in the dashboard's JSON tree.
"""


def queries(node, keys=("expr",)):
    if isinstance(node, dict):
        for key in keys:
            if isinstance(node.get(key), str):
                yield node[key]
        for v in node.values():
            yield from queries(v, keys)
    elif isinstance(node, list):
        for v in node:
            yield from queries(v, keys)
