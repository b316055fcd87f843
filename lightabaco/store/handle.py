"""The database proxy every model binds to; db.py binds it per process (connect()).

Its own module so that the models (models.py, sharing.py, fast.py) need not import db.py, which imports
them to create their tables: no import cycle between the schema and the connection code.
"""

from __future__ import annotations

import peewee

database = peewee.DatabaseProxy()
