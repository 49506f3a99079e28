"""Share and watch runs in a browser: the self-contained HTML report and the live dashboard.

``twinpeaks.web.build`` writes the report, ``twinpeaks.web.server`` serves the
dashboard, both drawing the payload of ``twinpeaks.web.payload`` with the same
page code (``static/report.js``). The package is not named ``report`` so that
``tp.report`` stays the function.
"""
