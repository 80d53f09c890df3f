#!/usr/bin/env python3
"""The documentation of the chart's values.yaml: a value is documented by a `# --` comment on it
or on one of its parent keys.

    python3 deploy/packaging/py/values_doc.py VALUES_YAML --check
        fails (exit 1, listing them) on values without documentation
    python3 deploy/packaging/py/values_doc.py VALUES_YAML
        prints the reference table (markdown: value, default, meaning)
    python3 deploy/packaging/py/values_doc.py VALUES_YAML --docs DOC_MD
        prints DOC_MD with that table put between its markers
        <!-- values-table:start --> and <!-- values-table:end -->
"""
import json
import re
import sys

import yaml

START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def scan(path):
    """Returns (rows, undocumented): rows are (dotted key, None, text) of documented keys."""
    stack = []  # (indent, key, documented)
    comment = []
    rows, undocumented = [], []
    for ln in open(path).read().splitlines():
        s = ln.strip()
        if not s:
            comment = []
            continue
        if s.startswith("#"):
            comment.append(s)
            continue
        if s.startswith("- "):
            comment = []
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", ln)
        if not m:
            comment = []
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        doc = [c for c in comment if c.startswith("# --")]
        text = ""
        if doc:
            i = comment.index(doc[0])
            text = " ".join(c.lstrip("#").strip() for c in comment[i:]).lstrip("-").strip()
        documented = bool(doc) or any(d for _, _, d in stack)
        keys = [k for _, k, _ in stack] + [key]
        if rest and not rest.startswith("#"):
            if not documented:
                undocumented.append(".".join(keys))
            if doc:
                rows.append((".".join(keys), None, text))
        elif doc:
            rows.append((".".join(keys), None, text))
        stack.append((indent, key, bool(doc)))
        comment = []
    return rows, undocumented


class UniqueKeyLoader(yaml.SafeLoader):
    """Refuses a mapping that repeats a key: YAML parsers keep the last one silently, so a repeated
    key hides the value written before it."""


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} repeated", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def table(values, rows):
    def get(keys):
        v = values
        for p in keys:
            v = v[p]
        return v

    out = ["| value | default | meaning |\n|---|---|---|"]
    for key, _, text in rows:
        v = get(key.split("."))
        d = json.dumps(v, separators=(", ", ": "))
        if len(d) > 60:
            d = d[:57] + "..."
        t = text.replace("|", "&#124;")
        out.append(f"| `{key}` | `{d}` | {t} |")
    return "\n".join(out) + "\n"


def main():
    path, args = sys.argv[1], sys.argv[2:]
    # Parsed first: invalid YAML or a repeated key fails every mode.
    values = yaml.load(open(path), Loader=UniqueKeyLoader)
    rows, undocumented = scan(path)
    if args == ["--check"]:
        if undocumented:
            print("undocumented values:", *undocumented, sep="\n  ")
            sys.exit(1)
        print(f"values.yaml: every value documented ({len(rows)} documented keys)")
        sys.exit(0)
    if args[:1] == ["--docs"]:
        doc = open(args[1]).read()
        a, b = doc.index(START) + len(START), doc.index(END)
        sys.stdout.write(doc[:a] + "\n" + table(values, rows) + doc[b:])
        return
    sys.stdout.write(table(values, rows))


if __name__ == "__main__":
    main()
