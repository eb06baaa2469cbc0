"""The local stack (ARCHITECTURE.md, "Local stack"): Azurite, the Event Grid bridge, the local
Functions host, demo.

Development tools, not the product: excluded from the Function app package by ``.funcignore``.
"""
