-- Tollgate schema. Control plane (projects, keys, plans) and the projections
-- of the ledger stream. The stream is the source of truth: every projection
-- table can be dropped and rebuilt by `tollgate replay`.

CREATE TABLE projects (
    project_id      uuid PRIMARY KEY,
    name            text NOT NULL,
    public_key      text NOT NULL UNIQUE,          -- pk_…: safe to embed in an app
    secret_key_hash text NOT NULL UNIQUE,          -- sha256 of sk_…; the key itself is never stored
    plan            jsonb,                         -- the validated plan (tiers and limits)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Last stream sequence each projection applied, written in the same
-- transaction as the projection's effect (exactly-once, invariant 2).
CREATE TABLE checkpoints (
    projection text PRIMARY KEY,
    last_seq   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Stream messages a projection could not decode: recorded, then skipped.
CREATE TABLE dead_letters (
    projection  text NOT NULL,
    seq         bigint NOT NULL,
    subject     text NOT NULL,
    error       text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, seq)
);

-- Ledger projection: one row per reservation (two-phase transfer).
CREATE TABLE reservations (
    project_id     uuid NOT NULL,
    reservation_id uuid NOT NULL,
    account_token  text NOT NULL,
    identity       text NOT NULL,
    model          text,
    tier           text,
    status         text NOT NULL CHECK (status IN ('open', 'committed', 'released', 'expired')),
    held           jsonb NOT NULL,
    actual         jsonb,
    overage        jsonb,
    reason         text,
    reserved_at    timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    settled_at     timestamptz,
    reserved_seq   bigint NOT NULL,
    settled_seq    bigint,
    PRIMARY KEY (project_id, reservation_id)
);
CREATE INDEX reservations_open_by_expiry ON reservations (expires_at) WHERE status = 'open';

-- Ledger projection: each account's lifetime balance per unit.
CREATE TABLE account_balances (
    project_id    uuid NOT NULL,
    account_token text NOT NULL,
    identity      text NOT NULL,
    unit          text NOT NULL,
    committed     numeric NOT NULL DEFAULT 0,
    held          numeric NOT NULL DEFAULT 0,
    overage       numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, account_token, unit)
);

-- Projector: per-period usage counters (committed and recorded usage).
CREATE TABLE usage_counters (
    project_id    uuid NOT NULL,
    account_token text NOT NULL,
    identity      text NOT NULL,
    window_kind   text NOT NULL,
    period_start  timestamptz NOT NULL,
    unit          text NOT NULL,
    model         text NOT NULL DEFAULT '',        -- '' when the usage named no model
    amount        numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, account_token, window_kind, period_start, unit, model)
);
CREATE INDEX usage_counters_by_project_period ON usage_counters (project_id, window_kind, period_start);
