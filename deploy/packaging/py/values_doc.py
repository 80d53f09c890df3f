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
    values = yaml.safe_load(open(path))  # parsed first: invalid YAML fails every mode
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
