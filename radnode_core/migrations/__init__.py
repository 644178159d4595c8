"""The index's Alembic migration scripts: ``env.py``, ``script.py.mako`` and ``versions/``.

Shipped as package data and run by :mod:`radnode_core.schema`; no ``alembic.ini`` is
needed. Every script is hand-written DDL (``op.create_table``, ``op.add_column``, ...)
and imports nothing of radnode's features, so the schema's history lives in the core
while each feature declares its tables on the shared metadata.
"""
