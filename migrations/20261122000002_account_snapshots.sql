-- Snapshots of the gate's in-memory account states (not a projection, and
-- not a source of truth): a state folded from the account's events up to
-- stream sequence `seq`, whose event is `event_id`. A gate that has to read
-- an account it does not hold in memory (after a restart, or after
-- forgetting it while idle) starts from the snapshot and reads only the
-- events after `seq`, instead of the account's whole history. A snapshot is
-- used only if the stream still holds `event_id` at `seq` on `subject`;
-- anything else (another stream, another format, unreadable bytes) is
-- ignored and the account is folded from its events. Deleting rows loses
-- nothing but speed.
CREATE TABLE account_snapshots (
    subject    text PRIMARY KEY,                   -- the account's ledger subject
    project_id uuid NOT NULL,
    seq        bigint NOT NULL,                    -- stream sequence of the last event folded in
    event_id   uuid NOT NULL,                      -- that event's id
    format     integer NOT NULL,                   -- projector::snapshot::SNAPSHOT_FORMAT
    state      bytea NOT NULL,                     -- AccountState::to_snapshot
    saved_at   timestamptz NOT NULL DEFAULT now()
);
