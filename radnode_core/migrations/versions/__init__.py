"""The migrations, one file per revision, oldest first (``0001_initial.py`` is 0.1.0)."""
