//! Proves the testkit does what other crates' tests rely on: a real JetStream
//! that keeps acknowledged messages across a crash-restart, and fresh, migrated,
//! separate PostgreSQL databases.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, context::Publish, stream};
use tollgate_testkit::nats::NatsServer;
use tollgate_testkit::{pg, ports, wait};

const STREAM: &str = "HARNESS";
const SUBJECT: &str = "harness.one";

async fn jetstream_for(server: &NatsServer) -> anyhow::Result<jetstream::Context> {
    let mut js = jetstream::new(server.connect().await?);
    js.set_timeout(Duration::from_secs(1));
    Ok(js)
}

#[tokio::test]
async fn nats_server_keeps_acked_messages_across_stop_and_restart() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    let port = server.port();

    let js = jetstream_for(&server).await?;
    js.get_or_create_stream(stream::Config {
        name: STREAM.to_string(),
        subjects: vec![SUBJECT.to_string()],
        ..Default::default()
    })
    .await
    .context("creating the stream")?;
    let ack = js.publish(SUBJECT, "first".into()).await?.await?;
    assert_eq!(ack.stream, STREAM);
    assert_eq!(ack.sequence, 1);

    server.stop().await;
    assert!(
        async_nats::connect(server.url()).await.is_err(),
        "a stopped server must refuse connections"
    );
    // Times out without an ack. Note: the client buffers it and may still deliver
    // it after the restart, so a failed publish is "unknown", not "not stored";
    // that is why the gate forgets an account whose append went unconfirmed
    // and reads it back from the stream before deciding again.
    let publish = async { js.publish(SUBJECT, "unknown".into()).await?.await };
    assert!(
        publish.await.is_err(),
        "publishing to a stopped server must fail"
    );

    server.restart().await?;
    assert_eq!(server.port(), port, "restart keeps the port");
    let fresh = jetstream_for(&server).await?;
    let mut stream = fresh
        .get_stream(STREAM)
        .await
        .context("stream after restart")?;
    let first = stream.get_raw_message(1).await?;
    assert_eq!(first.payload.as_ref(), b"first");

    // The client from before the crash reconnects on its own; retries with the
    // same message id are deduplicated by the server.
    wait::until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let publish = Publish::build()
                .payload("second".into())
                .message_id("second");
            match js.send_publish(SUBJECT, publish).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await?;
    let last = stream.info().await?.state.last_sequence;
    let mut payloads = Vec::new();
    for sequence in 1..=last {
        payloads.push(stream.get_raw_message(sequence).await?.payload);
    }
    assert_eq!(payloads[0].as_ref(), b"first");
    assert_eq!(
        payloads.iter().filter(|p| p.as_ref() == b"second").count(),
        1
    );
    assert!(payloads[1..]
        .iter()
        .all(|p| [&b"second"[..], b"unknown"].contains(&p.as_ref())));
    Ok(())
}

#[tokio::test]
async fn two_nats_servers_do_not_share_ports_or_stores() -> anyhow::Result<()> {
    let a = NatsServer::start().await?;
    let b = NatsServer::start().await?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    let store = a.store_dir();
    drop(a);
    // Dropping the handle kills the server and removes its store.
    wait::until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { !store.exists() },
    )
    .await?;
    b.connect().await?;
    Ok(())
}

#[tokio::test]
async fn fresh_databases_are_distinct_migrated_and_writable() -> anyhow::Result<()> {
    let one = pg::fresh_database().await?;
    let two = pg::fresh_database().await?;
    assert_ne!(one.name(), two.name());
    assert_ne!(one.url(), two.url());
    for db in [&one, &two] {
        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(db.pool())
            .await?;
        assert_eq!(current, db.name);
        assert!(current.starts_with("tg_test_"));
        let migrations_table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(db.pool())
                .await?;
        assert_eq!(migrations_table.as_deref(), Some("_sqlx_migrations"));
    }

    // A table made in one database is invisible in the other.
    sqlx::raw_sql(
        "CREATE TABLE harness_probe (id int PRIMARY KEY); INSERT INTO harness_probe VALUES (1)",
    )
    .execute(one.pool())
    .await?;
    sqlx::raw_sql("CREATE TABLE harness_probe (id int PRIMARY KEY)")
        .execute(two.pool())
        .await?;
    let count_two: i64 = sqlx::query_scalar("SELECT count(*) FROM harness_probe")
        .fetch_one(two.pool())
        .await?;
    assert_eq!(count_two, 0);
    Ok(())
}

#[tokio::test]
async fn wait_until_is_bounded() -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let never = wait::until(
        Duration::from_millis(200),
        Duration::from_millis(20),
        || async { false },
    )
    .await;
    assert!(never.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));

    // A check that hangs is cut off at the deadline too.
    let hangs = wait::until(
        Duration::from_millis(200),
        Duration::from_millis(20),
        || async { std::future::pending::<bool>().await },
    )
    .await;
    assert!(hangs.is_err());

    let mut calls = 0;
    let value = wait::until_ok(Duration::from_secs(2), Duration::from_millis(1), || {
        calls += 1;
        let n = calls;
        async move {
            anyhow::ensure!(n >= 3, "not yet");
            Ok(n)
        }
    })
    .await?;
    assert_eq!(value, 3);
    Ok(())
}

#[test]
fn free_ports_can_be_bound() -> anyhow::Result<()> {
    let port = ports::free_port();
    std::net::TcpListener::bind(("127.0.0.1", port))?;
    Ok(())
}
