-- Snapshots are JSON of tens to hundreds of kilobytes, rewritten as an
-- account keeps being used: PostgreSQL's default TOAST compression (pglz)
-- was ~13 % of the database's CPU under load. lz4 compresses them about as
-- well for a fraction of the CPU. Only an optimization: a server built
-- without lz4 keeps pglz.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE account_snapshots ALTER COLUMN state SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'account_snapshots.state keeps the default compression: %', SQLERRM;
END
$$;
