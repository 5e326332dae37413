"""The ``mlwarden`` command: one module per subcommand, registered in :mod:`mlwarden.cli.main`."""
