-- MiSS schema v11 (PostgreSQL): service accounts (SPEC §17.1).
-- Applied by miss_server.store.postgres_pool.Database.migrate, like 0001.
-- The same columns as SQLite's 0008_services.sql (read its comments). A
-- column with a constant default is added without rewriting the table.

ALTER TABLE users ADD COLUMN service BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN replies BOOLEAN NOT NULL DEFAULT TRUE;

-- The directory search adds NOT service to its WHERE: the trigram index
-- users_search (0006), whose predicate that WHERE implies, still serves it.
CREATE INDEX users_services ON users (organisation, name COLLATE "C", user_id) WHERE service;
