//! The control plane in PostgreSQL: projects, their keys and plans.
//!
//! Secret keys (`sk_…`) are stored only as SHA-256 hashes (they are long
//! random tokens, so a fast hash is enough); the key is shown once, at
//! creation. [`ControlCache`] keeps recently used projects in memory for a
//! few seconds and forgets a project as soon as a change is announced on
//! [`schemas::subjects::CONTROL_CHANGED`].

use dashmap::DashMap;
use rand::distributions::Alphanumeric;
use rand::Rng;
use schemas::plan::Plan;
use schemas::ProjectId;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cached project is trusted without a change notice.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// A project as the data plane needs it.
#[derive(Clone, Debug)]
pub struct Project {
    pub project_id: ProjectId,
    pub name: String,
    pub public_key: String,
    pub plan: Option<Plan>,
    /// A plan is stored that this server cannot read (one applied by a
    /// newer version): no tier can be judged, so calls are refused
    /// ([`TierError::PlanUnreadable`]) rather than let through unlimited.
    pub plan_unreadable: bool,
}

/// The keys of a new project; the secret is never shown again (and never
/// printed by `Debug`).
#[derive(Clone, serde::Serialize)]
pub struct NewProject {
    pub project_id: ProjectId,
    pub project_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for NewProject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewProject")
            .field("project_id", &self.project_id)
            .field("project_key", &self.project_key)
            .field("secret_key", &"sk_***")
            .finish()
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A project's secret key: this prefix and this many letters and digits.
const SECRET_KEY_PREFIX: &str = "sk_";
const SECRET_KEY_LEN: usize = 40;

/// Whether `text` has the shape of a project's secret key (OpenAI's and
/// Anthropic's keys start `sk-`, not `sk_`).
pub fn looks_like_secret_key(text: &str) -> bool {
    text.strip_prefix(SECRET_KEY_PREFIX).is_some_and(|rest| {
        rest.len() == SECRET_KEY_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn token(prefix: &str, len: usize) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

pub async fn create_project(pool: &PgPool, name: &str) -> sqlx::Result<NewProject> {
    let new = NewProject {
        project_id: ProjectId::new(),
        project_key: token("pk_", 24),
        secret_key: token(SECRET_KEY_PREFIX, SECRET_KEY_LEN),
    };
    sqlx::query("INSERT INTO projects (project_id, name, public_key, secret_key_hash) VALUES ($1, $2, $3, $4)")
        .bind(new.project_id.0)
        .bind(name)
        .bind(&new.project_key)
        .bind(hash_secret(&new.secret_key))
        .execute(pool)
        .await?;
    Ok(new)
}

type Row = (uuid::Uuid, String, String, Option<serde_json::Value>);

fn to_project(row: Row) -> Project {
    let (id, name, public_key, plan) = row;
    let mut plan_unreadable = false;
    let plan = plan.and_then(|v| match serde_json::from_value::<Plan>(v) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(project_id = %id, error = %e, "stored plan cannot be read; the project's calls are refused until it is applied again");
            plan_unreadable = true;
            None
        }
    });
    Project {
        project_id: ProjectId(id),
        name,
        public_key,
        plan,
        plan_unreadable,
    }
}

pub async fn project_by_public_key(
    pool: &PgPool,
    public_key: &str,
) -> sqlx::Result<Option<Project>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT project_id, name, public_key, plan FROM projects WHERE public_key = $1",
    )
    .bind(public_key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(to_project))
}

pub async fn project_by_secret(pool: &PgPool, secret: &str) -> sqlx::Result<Option<Project>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT project_id, name, public_key, plan FROM projects WHERE secret_key_hash = $1",
    )
    .bind(hash_secret(secret))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(to_project))
}

/// Sets a project's plan. Returns false if no project has that public key.
pub async fn apply_plan(pool: &PgPool, public_key: &str, plan: &Plan) -> anyhow::Result<bool> {
    let json = serde_json::to_value(plan)?;
    let done =
        sqlx::query("UPDATE projects SET plan = $2, updated_at = now() WHERE public_key = $1")
            .bind(public_key)
            .bind(json)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// How long announcing a change waits for NATS.
const ANNOUNCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Tells every running process that the control plane changed. Gives up
/// after [`ANNOUNCE_TIMEOUT`] (a client that keeps retrying its first
/// connection would otherwise wait for ever): the change is already stored,
/// and caches refresh on their own within [`CACHE_TTL`].
pub async fn announce_change(client: &async_nats::Client) {
    let announce = async {
        client
            .publish(schemas::subjects::CONTROL_CHANGED, bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())
    };
    let error = match tokio::time::timeout(ANNOUNCE_TIMEOUT, announce).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => format!("NATS did not answer within {ANNOUNCE_TIMEOUT:?}"),
    };
    tracing::warn!(error = %error, "could not announce a control-plane change; running processes pick it up within {CACHE_TTL:?}");
}

/// Calls `forget` whenever a control-plane change is announced, until the client closes.
/// Caches use it to drop what they hold; they also expire entries on their own.
pub fn on_change(client: async_nats::Client, forget: impl Fn() + Send + 'static) {
    tokio::spawn(async move {
        use futures::StreamExt;
        let Ok(mut sub) = client.subscribe(schemas::subjects::CONTROL_CHANGED).await else {
            tracing::warn!("cannot follow control-plane changes; caches refresh on their own");
            return;
        };
        while sub.next().await.is_some() {
            forget();
        }
    });
}

/// Which key a lookup is by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Secret(String),
    Public(String),
}

/// Projects by key, cached briefly. Cheap to clone.
#[derive(Clone)]
pub struct ControlCache {
    pool: PgPool,
    entries: Cached<Key, Option<Project>>,
}

/// Entries read from the control plane: fresh for [`CACHE_TTL`], all
/// forgotten when a change is announced. A read that started before a
/// change does not store its (maybe older) result after it. Cheap to clone.
pub struct Cached<K, V> {
    entries: Arc<DashMap<K, (Instant, V)>>,
    /// Bumped by every [`Cached::clear`].
    changes: Arc<std::sync::atomic::AtomicU64>,
    max: usize,
}

impl<K, V> Clone for Cached<K, V> {
    fn clone(&self) -> Self {
        Cached {
            entries: self.entries.clone(),
            changes: self.changes.clone(),
            max: self.max,
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone + Send + Sync + 'static, V: Clone + Send + Sync + 'static>
    Cached<K, V>
{
    /// A cache that starts over past `max` entries.
    pub fn new(max: usize) -> Self {
        Cached {
            entries: Arc::new(DashMap::new()),
            changes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            max,
        }
    }

    /// The entry for `key` if it is fresh.
    pub fn fresh(&self, key: &K) -> Option<V> {
        let hit = self.entries.get(key)?;
        (hit.0.elapsed() < CACHE_TTL).then(|| hit.1.clone())
    }

    /// Taken before reading the control plane; see [`Cached::store`].
    pub fn version(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps `value`, read after [`Cached::version`] returned `version`,
    /// unless a change was announced since (it may predate the change).
    pub fn store(&self, key: K, value: V, version: u64) {
        if self.entries.len() > self.max {
            self.entries.clear();
        }
        if self.version() != version {
            return;
        }
        self.entries.insert(key.clone(), (Instant::now(), value));
        // A change announced between the check and the insert may have
        // cleared the entries before this one went in: take it out again.
        // (One announced after this check clears it itself: `clear` counts
        // the change before it clears.)
        if self.version() != version {
            self.entries.remove(&key);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.entries.clear();
    }

    /// Forgets everything when a change is announced, until the client closes.
    pub fn follow_changes(&self, client: async_nats::Client) {
        let cache = self.clone();
        on_change(client, move || cache.clear());
    }
}

impl ControlCache {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            entries: Cached::new(100_000),
        }
    }

    /// Forgets everything when a change is announced, until the client closes.
    pub fn follow_changes(&self, client: async_nats::Client) {
        self.entries.follow_changes(client);
    }

    pub fn invalidate(&self) {
        self.entries.clear();
    }

    pub async fn by_secret(&self, secret: &str) -> sqlx::Result<Option<Project>> {
        self.get(Key::Secret(hash_secret(secret))).await
    }

    pub async fn by_public_key(&self, public_key: &str) -> sqlx::Result<Option<Project>> {
        self.get(Key::Public(public_key.to_owned())).await
    }

    async fn get(&self, key: Key) -> sqlx::Result<Option<Project>> {
        if let Some(hit) = self.entries.fresh(&key) {
            return Ok(hit);
        }
        let version = self.entries.version();
        let project = match &key {
            Key::Secret(hash) => {
                let row: Option<Row> = sqlx::query_as("SELECT project_id, name, public_key, plan FROM projects WHERE secret_key_hash = $1")
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(to_project)
            }
            Key::Public(pk) => project_by_public_key(&self.pool, pk).await?,
        };
        self.entries.store(key, project.clone(), version);
        Ok(project)
    }
}

/// Why a request's tier or model cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TierError {
    #[error("tier `{0}` does not exist: this project has no plan yet (tollgate plans apply)")]
    NoPlan(String),
    #[error("tier `{requested}` does not exist; tiers: {known}")]
    UnknownTier { requested: String, known: String },
    #[error("model `{model}` is not available on tier `{tier}`")]
    ModelNotAllowed { model: String, tier: String },
    #[error("tier `{0}` allows only some models: name the `model`")]
    ModelRequired(String),
    #[error("this project's plan cannot be read by this server (applied by another version?); apply it again (tollgate plans apply)")]
    PlanUnreadable,
}

impl Project {
    /// The tier named by the request, else the default; a project without a
    /// plan has one tier, `default`, with no limits.
    pub fn tier(
        &self,
        requested: Option<&str>,
    ) -> Result<(String, schemas::plan::Tier), TierError> {
        if self.plan_unreadable {
            return Err(TierError::PlanUnreadable);
        }
        let Some(plan) = &self.plan else {
            return match requested {
                None => Ok(("default".to_owned(), schemas::plan::Tier::default())),
                Some(t) => Err(TierError::NoPlan(t.to_owned())),
            };
        };
        plan.tier(requested)
            .map(|(name, tier)| (name.to_owned(), tier.clone()))
            .ok_or_else(|| TierError::UnknownTier {
                requested: requested.unwrap_or_default().to_owned(),
                known: plan.tiers.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

/// Refuses a model that `tier` does not allow.
pub fn check_model(
    tier_name: &str,
    tier: &schemas::plan::Tier,
    model: Option<&str>,
) -> Result<(), TierError> {
    let Some(allowed) = &tier.models else {
        return Ok(());
    };
    match model {
        Some(m) if allowed.iter().any(|g| g.matches(m)) => Ok(()),
        Some(m) => Err(TierError::ModelNotAllowed {
            model: m.to_owned(),
            tier: tier_name.to_owned(),
        }),
        None => Err(TierError::ModelRequired(tier_name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::Cached;

    #[test]
    fn generated_secret_keys_are_recognised_and_provider_keys_are_not() {
        let key = super::token(super::SECRET_KEY_PREFIX, super::SECRET_KEY_LEN);
        assert!(super::looks_like_secret_key(&key), "{key}");
        for other in [
            "sk-proj-abc123",
            "sk-ant-api03-xyz",
            "pk_abc",
            &key[..key.len() - 1],
        ] {
            assert!(!super::looks_like_secret_key(other), "{other}");
        }
    }

    #[test]
    fn a_read_that_started_before_a_change_is_not_kept_after_it() {
        let cache: Cached<&str, u32> = Cached::new(10);
        // Read, then a change is announced, then the (older) result arrives.
        let version = cache.version();
        cache.clear();
        cache.store("project", 1, version);
        assert_eq!(cache.fresh(&"project"), None);
        // A read that started after the change is kept.
        let version = cache.version();
        cache.store("project", 2, version);
        assert_eq!(cache.fresh(&"project"), Some(2));
        // And forgotten at the next change.
        cache.clone().clear();
        assert_eq!(cache.fresh(&"project"), None);
    }
}
