"""Pictures of what deid did and measured.

- :mod:`deid.report.contact`: contact sheets (each face before and after);
- :mod:`deid.report.plots`: the figures of run reports and of the ``deid eval`` reports;
- :mod:`deid.report.style`: how they look (one matplotlib style, palette, display names);
- :mod:`deid.report.html`: ``deid report``, an HTML page of a run or ``deid eval dataset``.
"""

from deid.report.contact import contact_sheet

__all__ = ["contact_sheet"]
