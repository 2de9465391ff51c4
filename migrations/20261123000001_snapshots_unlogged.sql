-- Snapshots are a cache of what the stream already says (deleting rows loses
-- nothing but speed), rewritten whole as an account keeps being used: a busy
-- account's is megabytes. Writing them to the WAL as well was half of what a
-- save cost PostgreSQL. An unlogged table is not written to the WAL; after a
-- crash of PostgreSQL (not a clean stop) it comes back empty, and accounts
-- are then read from their events, as when no snapshot was ever saved.
-- Standbys do not get its rows either, for the same reason. The change
-- rewrites the table under an exclusive lock: processes still running read
-- whole histories (their 500 ms wait for a snapshot runs out) until it ends.
ALTER TABLE account_snapshots SET UNLOGGED;
