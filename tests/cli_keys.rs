//! The control-plane commands as the built binary. `tollgate keys add`: the
//! provider key goes in on standard input, is stored encrypted, and its
//! plaintext shows up in neither stdout, stderr nor any column of
//! `provider_keys`. Every such command finishes when NATS is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy::keys::{load_provider_key, EncryptionKey, ENCRYPTION_KEY_ENV};
use schemas::ProjectId;
use std::path::Path;
use std::process::{Output, Stdio};
use testkit::nats::NatsServer;
use testkit::pg::TestDb;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

const PLAINTEXT: &str = "sk-ant-api03-CLIplaintextSECRET-9876543210-wxyz";

struct Env<'a> {
    db: &'a TestDb,
    nats: &'a NatsServer,
    cwd: &'a Path,
}

impl Env<'_> {
    async fn run(&self, args: &[&str], stdin: Option<&str>, enc: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args)
            .current_dir(self.cwd)
            .env("DATABASE_URL", self.db.url())
            .env("NATS_URL", self.nats.url())
            .env_remove(ENCRYPTION_KEY_ENV)
            // Everything the commands can log, so the checks that no key
            // is printed cover it all.
            .env("TOLLGATE_LOG", "trace")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(enc) = enc {
            cmd.env(ENCRYPTION_KEY_ENV, enc);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        child.wait_with_output().await.unwrap()
    }

    /// `tollgate project create --name NAME`: what it printed.
    async fn create_project(&self, name: &str) -> serde_json::Value {
        let created = self
            .run(&["project", "create", "--name", name], None, None)
            .await;
        assert!(created.status.success(), "{}", text(&created.stderr));
        serde_json::from_slice(&created.stdout).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_plaintext(out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        assert!(!text(stream).contains(PLAINTEXT), "the key was printed");
        assert!(
            !text(stream).contains(&PLAINTEXT[..24]),
            "part of the key was printed"
        );
    }
}

#[tokio::test]
async fn keys_add_stores_the_key_encrypted_and_prints_only_its_hint() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let env = Env {
        db: &db,
        nats: &nats,
        cwd: cwd.path(),
    };
    let enc = EncryptionKey::generate();

    let created = env.create_project("keys").await;
    let pk = created["project_key"].as_str().unwrap().to_owned();
    let project: ProjectId = created["project_id"].as_str().unwrap().parse().unwrap();
    let add = [
        "keys",
        "add",
        "--project",
        pk.as_str(),
        "--provider",
        "anthropic",
    ];

    // Without TOLLGATE_ENCRYPTION_KEY (nor ./.tollgate/encryption.key): refused, by name.
    let out = env.run(&add, Some(PLAINTEXT), None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(ENCRYPTION_KEY_ENV),
        "{}",
        text(&out.stderr)
    );
    assert_no_plaintext(&out);

    // Empty standard input: refused.
    let out = env.run(&add, Some("  \n"), Some(&enc.to_hex())).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no provider key"),
        "{}",
        text(&out.stderr)
    );

    // The real thing, with a trailing newline as `echo` leaves it.
    let out = env
        .run(&add, Some(&format!("{PLAINTEXT}\n")), Some(&enc.to_hex()))
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_no_plaintext(&out);
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"project_key": pk, "provider": "anthropic", "key_hint": "…wxyz"})
    );

    let rows: Vec<(String, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT row_to_json(k)::text, ciphertext, nonce FROM provider_keys k")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    for (json, ciphertext, nonce) in &rows {
        assert!(
            !json.contains(PLAINTEXT) && !json.contains(&PLAINTEXT[..24]),
            "{json}"
        );
        for bytes in [ciphertext, nonce] {
            let needle = PLAINTEXT.as_bytes();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
    // What was stored is the trimmed key, under this encryption key.
    let stored = load_provider_key(db.pool(), project, "anthropic", &enc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose(), PLAINTEXT);

    // With the variable unset, the key `tollgate up` keeps in ./.tollgate/ is used.
    std::fs::create_dir_all(cwd.path().join(".tollgate")).unwrap();
    std::fs::write(cwd.path().join(".tollgate/encryption.key"), enc.to_hex()).unwrap();
    let add_openai = [
        "keys",
        "add",
        "--project",
        pk.as_str(),
        "--provider",
        "openai",
    ];
    let out = env.run(&add_openai, Some(PLAINTEXT), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_no_plaintext(&out);
    let stored = load_provider_key(db.pool(), project, "openai", &enc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose(), PLAINTEXT);

    // An unknown provider is refused.
    let bad = [
        "keys",
        "add",
        "--project",
        pk.as_str(),
        "--provider",
        "nope",
    ];
    let out = env.run(&bad, Some(PLAINTEXT), None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown provider"),
        "{}",
        text(&out.stderr)
    );
    assert_no_plaintext(&out);
}

/// `prices set --model M --input I --output O`, and (JSON pointer into the
/// printed price, value) pairs it must show.
type PriceCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[tokio::test]
async fn providers_add_and_prices_set_print_what_they_stored() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let env = Env {
        db: &db,
        nats: &nats,
        cwd: cwd.path(),
    };
    let created = env.create_project("cfg").await;
    let pk = created["project_key"].as_str().unwrap().to_owned();

    let out = env
        .run(
            &[
                "providers",
                "add",
                "--project",
                &pk,
                "--name",
                "together",
                "--base-url",
                "https://api.together.xyz/v1/",
            ],
            None,
            None,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["base_url"], "https://api.together.xyz/v1");

    // A model the table does not know: the prices given, as exact decimals.
    // A model the bundled table prices keeps its other prices, in
    // proportion: Gemini 2.5 Pro's above 200k tokens (2.50 / 15 per
    // million at 1.25 / 10) at 1.00 / 8 here are 2.00 / 12. Named as
    // clients name it, a model starts from the entry the proxy prices its
    // calls with: Grok 4's is `xai/grok-4`, with its tier above 128k
    // tokens; Gemini's Google AI Studio's (cache reads at a quarter of
    // input), not Vertex's bare `gemini-2.5-pro` (a tenth).
    let cases: [PriceCase; 4] = [
        (
            "together/llama-3",
            "0.0000008",
            "9e-7",
            &[
                ("/input_cost_per_token", "0.0000008"),
                ("/output_cost_per_token", "0.0000009"),
            ],
        ),
        (
            "gemini/gemini-2.5-pro",
            "0.000001",
            "0.000008",
            &[
                ("/long_context/0/input_cost_per_token", "0.000002"),
                ("/long_context/0/output_cost_per_token", "0.000012"),
                ("/provider", "gemini"),
            ],
        ),
        (
            "grok-4",
            "0.000001",
            "0.000008",
            &[("/long_context/0/input_cost_per_token", "0.000002")],
        ),
        (
            "gemini-2.5-pro",
            "0.000001",
            "0.000008",
            &[("/cache_read_input_token_cost", "0.00000025")],
        ),
    ];
    for (model, input, output, checks) in cases {
        let out = env
            .run(
                &[
                    "prices",
                    "set",
                    "--project",
                    &pk,
                    "--model",
                    model,
                    "--input",
                    input,
                    "--output",
                    output,
                ],
                None,
                None,
            )
            .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (field, want) in checks {
            assert_eq!(
                printed["price"].pointer(field),
                Some(&serde_json::json!(want)),
                "{model} {field}: {printed}"
            );
        }
    }

    let out = env
        .run(
            &[
                "prices",
                "set",
                "--project",
                &pk,
                "--model",
                "m",
                "--input",
                "-0.1",
                "--output",
                "0",
            ],
            None,
            None,
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--input must not be negative"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn control_plane_commands_finish_when_nats_is_down() {
    let db = testkit::pg::fresh_database().await.unwrap();
    let mut nats = NatsServer::start().await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let env = Env {
        db: &db,
        nats: &nats,
        cwd: cwd.path(),
    };
    let created = env.create_project("offline").await;
    let pk = created["project_key"].as_str().unwrap().to_owned();
    let plan = cwd.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 7 }\n",
    )
    .unwrap();
    nats.stop().await;
    let env = Env {
        db: &db,
        nats: &nats,
        cwd: cwd.path(),
    };
    // The plan is stored; announcing it to running processes cannot be, and
    // the command says so instead of waiting for NATS for ever.
    let applied = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        env.run(
            &["plans", "apply", "--project", &pk, plan.to_str().unwrap()],
            None,
            None,
        ),
    )
    .await
    .expect("`plans apply` must finish while NATS is down");
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert!(
        text(&applied.stderr).contains("could not announce"),
        "{}",
        text(&applied.stderr)
    );
    let (stored,): (serde_json::Value,) =
        sqlx::query_as("SELECT plan FROM projects WHERE public_key = $1")
            .bind(&pk)
            .fetch_one(db.pool())
            .await
            .unwrap();
    let cap = stored["tiers"]["free"]["limits"][0]["cap"].to_string();
    assert_eq!(cap.trim_matches('"'), "7", "{stored}");
}
