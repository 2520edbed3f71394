"""Ranking audio x visual extractor pairings (the seed paper's upper bound, LogME)."""
