"""Adapters: one module per ecosystem (vision, clip, text, graph, hf), imported on demand.

Examples:
    >>> from ncl_ext.adapters import hf   # doctest: +SKIP
"""
