"""avvp_pipe.pipeline: the stages, one subpackage each (llp, decode, extract, train, evaluate,
analyze, synth) and the command line (cli). See ARCHITECTURE.md for what imports what.

This ``__init__`` imports nothing, so importing one stage never drags in the others.
"""
