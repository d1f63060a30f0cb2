"""Mutation testing of the hot paths with a tool of our own (see ``runner.py``); the list is ``mutations.py``."""
