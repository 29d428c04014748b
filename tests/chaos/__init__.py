"""Chaos tests: real worker processes and servers killed while events flow; nothing may be lost."""
