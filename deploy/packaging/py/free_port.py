#!/usr/bin/env python3
"""Prints a TCP port on 127.0.0.1 that is free now (the kernel's pick), for a local listener.

    python3 deploy/packaging/py/free_port.py
"""
import socket

s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
