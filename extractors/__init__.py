"""Extractor registry: specs as data, one module per extractor family."""
