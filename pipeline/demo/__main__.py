"""``python -m avvp_pipe.pipeline.demo`` (what ``make demo`` runs).

The demo is its own package, not a module of the CLI package: the CLI imports every module
of its package to register commands, and runpy would then warn that it runs a module that
was already imported.
"""

from avvp_pipe.pipeline.demo import main

main()
