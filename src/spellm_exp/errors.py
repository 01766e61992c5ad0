"""The project's own errors: bad input or a result that must not be trusted, with a message that says what to
change. Every command prints one of these as a single line (spellm_exp.cli.exit_on); set SPELLM_TRACEBACK=1 to
see the traceback as well."""


class SpellmError(Exception):
    """Base of every error whose message names the fix; a command prints it without a traceback."""
