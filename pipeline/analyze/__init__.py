"""Why a pairing fuses well or badly: similarity diagnostics of stores and trained runs, probes."""
