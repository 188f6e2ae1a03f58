"""Pictures of what deid did: contact sheets."""

from deid.report.contact import contact_sheet

__all__ = ["contact_sheet"]
