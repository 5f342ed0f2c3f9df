"""The jobs that are neither training recipes nor retrieval: one module per command.

Each module has its typed ``Config``, ``add_arguments(parser)``, ``config_from_args(args, env)``
and ``run(config)``; `metarec.cli` maps command names to them.
"""
