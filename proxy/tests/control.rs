//! The proxy's control-plane data against a real PostgreSQL: provider keys
//! encrypted at rest (round trip, wrong key, rows moved between projects, no
//! plaintext in any column), encryption-key parsing, `ProjectConfig::load`
//! and `ProjectConfigCache` invalidation (by call and by NATS notice).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use rust_decimal_macros::dec;
use schemas::ProjectId;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_proxy::keys::{
    load_provider_key, resolve_encryption_key, store_provider_key, EncryptionKey,
    ENCRYPTION_KEY_ENV,
};
use tollgate_proxy::pricing::ModelPrice;
use tollgate_proxy::project_config::{
    add_custom_provider, set_price_override, ProjectConfig, ProjectConfigCache,
};
use tollgate_proxy::providers::{CustomProvider, ProviderKey};

const PLAINTEXT: &str = "sk-ant-api03-PLAINTEXTsecretVALUE-0123456789-wxyz";

async fn project(pool: &PgPool) -> ProjectId {
    let id = ProjectId::new();
    sqlx::query("INSERT INTO projects (project_id, name, public_key, secret_key_hash) VALUES ($1, 'p', $2, $3)")
        .bind(id.0)
        .bind(format!("pk_{}", id.0.simple()))
        .bind(format!("hash_{}", id.0.simple()))
        .execute(pool)
        .await
        .unwrap();
    id
}

fn price(input: rust_decimal::Decimal, output: rust_decimal::Decimal) -> ModelPrice {
    ModelPrice::per_token(input, output)
}

#[tokio::test]
async fn a_stored_key_decrypts_with_the_same_encryption_key() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let p = project(&db.pool).await;
    let enc = EncryptionKey::generate();
    let key = ProviderKey::new(PLAINTEXT);
    store_provider_key(&db.pool, p, "anthropic", &key, &enc)
        .await
        .unwrap();
    let loaded = load_provider_key(&db.pool, p, "anthropic", &enc)
        .await
        .unwrap();
    assert_eq!(loaded, Some(key));
    assert_eq!(
        load_provider_key(&db.pool, p, "openai", &enc)
            .await
            .unwrap(),
        None
    );

    // Storing again replaces the key (upsert).
    let newer = ProviderKey::new("sk-ant-api03-a-newer-key-000000000000");
    store_provider_key(&db.pool, p, "anthropic", &newer, &enc)
        .await
        .unwrap();
    let loaded = load_provider_key(&db.pool, p, "anthropic", &enc)
        .await
        .unwrap();
    assert_eq!(loaded, Some(newer));
    let (rows, hint): (i64, String) = sqlx::query_as(
        "SELECT count(*) OVER (), key_hint FROM provider_keys WHERE project_id = $1",
    )
    .bind(p.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((rows, hint.as_str()), (1, "0000"));
}

#[tokio::test]
async fn each_encryption_uses_a_new_nonce() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let (a, b) = (project(&db.pool).await, project(&db.pool).await);
    let enc = EncryptionKey::generate();
    let key = ProviderKey::new(PLAINTEXT);
    store_provider_key(&db.pool, a, "openai", &key, &enc)
        .await
        .unwrap();
    store_provider_key(&db.pool, b, "openai", &key, &enc)
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT ciphertext, nonce FROM provider_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1.len(), 12, "96-bit nonce");
    assert_ne!(rows[0].1, rows[1].1);
    assert_ne!(rows[0].0, rows[1].0);
}

#[tokio::test]
async fn another_encryption_key_cannot_decrypt() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let p = project(&db.pool).await;
    let enc = EncryptionKey::generate();
    store_provider_key(&db.pool, p, "openai", &ProviderKey::new(PLAINTEXT), &enc)
        .await
        .unwrap();
    let err = load_provider_key(&db.pool, p, "openai", &EncryptionKey::generate())
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(ENCRYPTION_KEY_ENV), "{message}");
    assert!(!message.contains(PLAINTEXT), "{message}");

    // ProjectConfig skips the key rather than failing the whole project.
    let config = ProjectConfig::load(&db.pool, p, Some(&EncryptionKey::generate()))
        .await
        .unwrap();
    assert!(config.key("openai").is_none());
}

#[tokio::test]
async fn a_row_copied_to_another_project_or_provider_does_not_decrypt() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let (a, b) = (project(&db.pool).await, project(&db.pool).await);
    let enc = EncryptionKey::generate();
    store_provider_key(&db.pool, a, "openai", &ProviderKey::new(PLAINTEXT), &enc)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO provider_keys (project_id, provider, ciphertext, nonce, key_hint) \
         SELECT $2, provider, ciphertext, nonce, key_hint FROM provider_keys WHERE project_id = $1",
    )
    .bind(a.0)
    .bind(b.0)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(load_provider_key(&db.pool, b, "openai", &enc)
        .await
        .is_err());
    let config = ProjectConfig::load(&db.pool, b, Some(&enc)).await.unwrap();
    assert!(config.key("openai").is_none());

    sqlx::query(
        "INSERT INTO provider_keys (project_id, provider, ciphertext, nonce, key_hint) \
         SELECT project_id, 'xai', ciphertext, nonce, key_hint FROM provider_keys WHERE project_id = $1",
    )
    .bind(a.0)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(load_provider_key(&db.pool, a, "xai", &enc).await.is_err());
    // The original still decrypts.
    assert!(load_provider_key(&db.pool, a, "openai", &enc)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn no_column_holds_the_plaintext() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let p = project(&db.pool).await;
    let enc = EncryptionKey::generate();
    store_provider_key(&db.pool, p, "gemini", &ProviderKey::new(PLAINTEXT), &enc)
        .await
        .unwrap();
    let (ciphertext, nonce, row_text): (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
        "SELECT ciphertext, nonce, row_to_json(k)::text FROM provider_keys k WHERE project_id = $1",
    )
    .bind(p.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let needle = PLAINTEXT.as_bytes();
    for (name, bytes) in [("ciphertext", &ciphertext), ("nonce", &nonce)] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{name} holds the plaintext"
        );
        // Not even a long piece of it.
        assert!(
            !bytes
                .windows(8)
                .any(|w| PLAINTEXT.as_bytes().windows(8).any(|n| n == w)),
            "{name} holds part of the plaintext"
        );
    }
    assert!(!row_text.contains(PLAINTEXT), "{row_text}");
    assert!(!row_text.contains(&PLAINTEXT[..20]), "{row_text}");
    assert_eq!(
        ciphertext.len(),
        PLAINTEXT.len() + 16,
        "plaintext + GCM tag"
    );
}

#[tokio::test]
async fn keys_are_only_for_known_providers() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let p = project(&db.pool).await;
    let enc = EncryptionKey::generate();
    let key = ProviderKey::new(PLAINTEXT);
    let err = store_provider_key(&db.pool, p, "together", &key, &enc)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown provider 'together'"),
        "{err}"
    );
    add_custom_provider(&db.pool, p, "together", "https://api.together.xyz/v1")
        .await
        .unwrap();
    store_provider_key(&db.pool, p, "together", &key, &enc)
        .await
        .unwrap();
    // Another project's custom provider does not count.
    let q = project(&db.pool).await;
    assert!(store_provider_key(&db.pool, q, "together", &key, &enc)
        .await
        .is_err());
    let err = store_provider_key(&db.pool, p, "openai", &ProviderKey::new("  "), &enc)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn encryption_key_debug_hides_the_bytes() {
    let enc = EncryptionKey::from_env_value(&"ab".repeat(32)).unwrap();
    let shown = format!("{enc:?} {:?}", Some(&enc));
    assert!(!shown.contains("ab"), "{shown}");
    assert!(!shown.contains("171"), "{shown}"); // 0xab as a decimal byte
    assert!(shown.contains("***"), "{shown}");
    assert_eq!(enc.to_hex(), "ab".repeat(32));
}

#[test]
fn bad_encryption_key_values_name_the_variable() {
    let b64_16 = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let cases = [
        "".to_owned(),
        "   ".to_owned(),
        "abcdef".to_owned(),
        "a".repeat(62),
        "a".repeat(66),
        b64_16,
        "this is not a key!".to_owned(),
        format!("{}zz", "a".repeat(62)),
    ];
    for value in cases {
        let err = EncryptionKey::from_env_value(&value)
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENCRYPTION_KEY_ENV), "{value:?}: {err}");
        if value.trim().len() > 4 {
            assert!(!err.contains(value.trim()), "{value:?} echoed: {err}");
        }
    }
    let good = EncryptionKey::generate();
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(good.to_hex()).unwrap());
    assert_eq!(EncryptionKey::from_env_value(&b64).unwrap(), good);
    assert_eq!(
        EncryptionKey::from_env_value(&good.to_hex().to_uppercase()).unwrap(),
        good
    );
}

#[test]
fn the_encryption_key_comes_from_the_variable_then_the_local_file() {
    let dir = std::env::temp_dir().join(format!("tollgate-keys-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("encryption.key");
    let (from_env, from_file) = (EncryptionKey::generate(), EncryptionKey::generate());

    assert!(resolve_encryption_key(None, &file).unwrap().is_none());
    std::fs::write(&file, format!("{}\n", from_file.to_hex())).unwrap();
    assert_eq!(
        resolve_encryption_key(None, &file).unwrap(),
        Some(from_file.clone())
    );
    assert_eq!(
        resolve_encryption_key(Some(String::new()), &file).unwrap(),
        Some(from_file),
        "a blank variable counts as unset"
    );
    assert_eq!(
        resolve_encryption_key(Some(from_env.to_hex()), &file).unwrap(),
        Some(from_env),
        "the variable wins"
    );
    let err = resolve_encryption_key(Some("nope".to_owned()), &file).unwrap_err();
    assert!(format!("{err:#}").contains(ENCRYPTION_KEY_ENV), "{err:#}");

    std::fs::write(&file, "garbage").unwrap();
    let err = format!("{:#}", resolve_encryption_key(None, &file).unwrap_err());
    assert!(
        err.contains(ENCRYPTION_KEY_ENV) && err.contains("encryption.key"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn project_config_holds_providers_prices_and_decrypted_keys() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let (p, other) = (project(&db.pool).await, project(&db.pool).await);
    let enc = EncryptionKey::generate();
    add_custom_provider(&db.pool, p, "together", "https://api.together.xyz/v1/")
        .await
        .unwrap();
    add_custom_provider(&db.pool, p, "groq", "https://api.groq.com/openai/v1")
        .await
        .unwrap();
    add_custom_provider(&db.pool, other, "vllm", "http://10.0.0.1:8000/v1")
        .await
        .unwrap();
    let override_price = price(dec!(0.000001), dec!(0.0000025));
    set_price_override(&db.pool, p, "together/llama-3", &override_price)
        .await
        .unwrap();
    store_provider_key(&db.pool, p, "anthropic", &ProviderKey::new(PLAINTEXT), &enc)
        .await
        .unwrap();
    store_provider_key(
        &db.pool,
        p,
        "together",
        &ProviderKey::new("tg-key-000000000000"),
        &enc,
    )
    .await
    .unwrap();
    assert!(add_custom_provider(&db.pool, p, "custom", "https://x.y/v1")
        .await
        .is_err());
    assert!(add_custom_provider(&db.pool, p, "ok", "file:///etc/passwd")
        .await
        .is_err());
    assert!(
        set_price_override(&db.pool, p, "m", &price(dec!(-1), dec!(1)))
            .await
            .is_err()
    );

    let config = ProjectConfig::load(&db.pool, p, Some(&enc)).await.unwrap();
    assert_eq!(
        config.custom_providers,
        vec![
            CustomProvider {
                name: "groq".to_owned(),
                base_url: "https://api.groq.com/openai/v1".to_owned()
            },
            CustomProvider {
                name: "together".to_owned(),
                base_url: "https://api.together.xyz/v1".to_owned()
            },
        ]
    );
    assert_eq!(
        config.price_overrides,
        vec![("together/llama-3".to_owned(), override_price.clone())]
    );
    assert_eq!(
        config.key("anthropic").map(ProviderKey::expose),
        Some(PLAINTEXT)
    );
    assert_eq!(
        config.key("together").map(ProviderKey::expose),
        Some("tg-key-000000000000")
    );
    assert!(config.key("openai").is_none());
    assert!(!format!("{config:?}").contains(PLAINTEXT));

    // Overrides feed the price table.
    let table = tollgate_proxy::pricing::PriceTable::default()
        .with_overrides(config.price_overrides.clone());
    assert_eq!(table.lookup("together", "llama-3"), Some(&override_price));

    // The price is stored as exact strings, not floats.
    let (json,): (serde_json::Value,) =
        sqlx::query_as("SELECT price FROM price_overrides WHERE project_id = $1")
            .bind(p.0)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(json["output_cost_per_token"], "0.0000025");

    // Without an encryption key, everything but the keys.
    let keyless = ProjectConfig::load(&db.pool, p, None).await.unwrap();
    assert_eq!(keyless.custom_providers.len(), 2);
    assert_eq!(keyless.price_overrides.len(), 1);
    assert!(keyless.key("anthropic").is_none());
}

#[tokio::test]
async fn the_cache_forgets_on_invalidate() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let p = project(&db.pool).await;
    let cache = ProjectConfigCache::new(db.pool.clone(), Some(EncryptionKey::generate()));
    let first = cache.get(p).await.unwrap();
    assert!(first.custom_providers.is_empty());

    add_custom_provider(&db.pool, p, "together", "https://api.together.xyz/v1")
        .await
        .unwrap();
    let cached = cache.get(p).await.unwrap();
    assert!(Arc::ptr_eq(&first, &cached), "served from the cache");
    assert!(cached.custom_providers.is_empty());

    cache.clone().invalidate();
    let fresh = cache.get(p).await.unwrap();
    assert_eq!(fresh.custom_providers.len(), 1);
}

#[tokio::test]
async fn the_cache_forgets_when_a_change_is_announced() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let nats = testkit::nats::NatsServer::start().await.unwrap();
    let client = nats.connect().await.unwrap();
    let p = project(&db.pool).await;
    let cache = ProjectConfigCache::new(db.pool.clone(), None);
    cache.follow_changes(client.clone());
    assert!(cache.get(p).await.unwrap().custom_providers.is_empty());
    add_custom_provider(&db.pool, p, "groq", "https://api.groq.com/openai/v1")
        .await
        .unwrap();

    // Well inside the 5 s TTL, so only the notice can explain a fresh read.
    // Announce repeatedly: the subscription may not be in place yet.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        client
            .publish(schemas::subjects::CONTROL_CHANGED, bytes::Bytes::new())
            .await
            .unwrap();
        client.flush().await.unwrap();
        if cache.get(p).await.unwrap().custom_providers.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change notice was not followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
