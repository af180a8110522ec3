"""announcer: phone announcements with generated speech."""

__version__ = "0.1.0"
