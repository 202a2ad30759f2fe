"""Integer path and query parameter types shared by every admin route.

An id beyond a signed 64-bit SQL integer cannot name a row, and handing it to the database driver
raises OverflowError (a 500); these types answer 422 before any query runs.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# SQLite INTEGER and PostgreSQL BIGINT: the largest id, offset or position a query can carry.
SQL_INT_MAX = 2**63 - 1

# A row id (job, reader study) or a 1-based number (a reader's case position).
RowId = Annotated[int, Path(ge=1, le=SQL_INT_MAX)]
# A 0-based index in a list the route builds (a job's slice pairs).
Index = Annotated[int, Path(ge=0, le=SQL_INT_MAX)]
# How many rows a listing skips.
Offset = Annotated[int, Query(ge=0, le=SQL_INT_MAX)]
