"""Storage backends: SQL databases (SQLite, PostgreSQL, MySQL) behind one narrow protocol."""
