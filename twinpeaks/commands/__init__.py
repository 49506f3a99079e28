"""One module per ``twinpeaks`` sub-command (see :mod:`twinpeaks.cli`)."""
