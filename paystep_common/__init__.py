"""Plumbing shared by the worker, the webhook and the command line: settings, logging, clients."""
