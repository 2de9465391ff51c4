-- The proxy's control-plane data, per project: upstream provider keys
-- (encrypted at rest), custom OpenAI-compatible providers and price overrides.

-- Provider API keys, AES-256-GCM encrypted with TOLLGATE_ENCRYPTION_KEY.
-- The associated data is project_id || provider, so a row copied to another
-- project (or provider) does not decrypt. The plaintext is never stored.
CREATE TABLE provider_keys (
    project_id uuid NOT NULL REFERENCES projects ON DELETE CASCADE,
    provider   text NOT NULL,                      -- openai, anthropic, gemini, xai or a custom provider's name
    ciphertext bytea NOT NULL,                     -- includes the 16-byte GCM tag
    nonce      bytea NOT NULL,                     -- 96 bits, random per encryption
    key_hint   text NOT NULL,                      -- last 4 chars, for display ('' for short keys)
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, provider)
);

-- A project's OpenAI-compatible providers, used as `name/model`.
CREATE TABLE custom_providers (
    project_id uuid NOT NULL REFERENCES projects ON DELETE CASCADE,
    name       text NOT NULL,
    base_url   text NOT NULL,                      -- includes the version path, e.g. https://api.together.xyz/v1
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- A project's prices, replacing the bundled table's entry under the same model id.
CREATE TABLE price_overrides (
    project_id uuid NOT NULL REFERENCES projects ON DELETE CASCADE,
    model      text NOT NULL,                      -- a price-table key: `model` or `provider/model`
    price      jsonb NOT NULL,                     -- a ModelPrice; amounts are decimal strings
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, model)
);
