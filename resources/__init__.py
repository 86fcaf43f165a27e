"""Tunesmith's bundled files, installed as the package ``tunesmith_resources`` (see setup.py).

Read them through ``engine.resources``, never by a path relative to the source.
"""
