class UserError(Exception):
    """A mistake in the user's config, data or command line: reported as one line, without a traceback."""
