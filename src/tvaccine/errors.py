"""One exception type for everything the user can fix; the CLI prints it as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input or settings. The message names the file, line or field at fault."""
