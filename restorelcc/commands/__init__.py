"""CLI subcommands, one module each, registered in ``restorelcc.cli.COMMANDS``."""
