"""The ground every package stands on: errors, atomic I/O and JSON, progress, text formatting.

Nothing here imports anything of avvp_pipe outside ``avvp_pipe.core`` (tests/test_layout.py).
"""
