"""The dashboard's pages: every module here with a module-level `routes = Routes()` is registered."""
