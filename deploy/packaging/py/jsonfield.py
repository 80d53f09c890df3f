#!/usr/bin/env python3
"""Prints fields of the JSON document on stdin, placed into a format string (Python's
str.format: `{a[b]}` is the field b of the object a).

    kubectl version -o json | python3 deploy/packaging/py/jsonfield.py '{clientVersion[gitVersion]}'
    cargo metadata --format-version 1 --no-deps | python3 deploy/packaging/py/jsonfield.py '{target_directory}'

Argument: the format. Fails (KeyError) when a field is missing.
"""
import json
import sys

print(sys.argv[1].format_map(json.load(sys.stdin)))
