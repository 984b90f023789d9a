"""Compatibility namespace for code written against ``xlibrary.pipeline``."""
