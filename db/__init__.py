"""The database: the schema, the engine and sessions, the clock, and every SQL statement."""
