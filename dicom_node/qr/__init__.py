"""Query/Retrieve: C-FIND, C-MOVE and C-GET answered from the index and storage (see docs/query_retrieve.md)."""
