"""Thin command-line entry points: parse a config, call the library, write results."""
