//! `mock_providers`: the testkit's mock OpenAI, Anthropic and Gemini servers
//! (plus a second OpenAI-kind mock standing in for xAI) as a standalone
//! process, for clients written in other languages (`tests/sdk/run.sh`).
//!
//! Starts the four mocks on `127.0.0.1:0` with the default behaviour and a
//! fixed input token count (11; output tokens = reply pieces sent), prints one
//! JSON line `{"openai":URL,"anthropic":URL,"gemini":URL,"xai":URL}` to
//! standard output (the base URLs to configure, as
//! `MockProvider::base_url` gives them), and serves until SIGTERM or SIGINT,
//! or, with `--exit-on-stdin-eof`, until standard input reaches end of file.
//!
//! `--input-tokens N` changes the fixed input token count.

use anyhow::Context as _;
use std::io::Write as _;
use tollgate_testkit::mock_providers::{MockBehavior, MockKind, MockProvider};

/// Input tokens every mock reports unless `--input-tokens` says otherwise.
const DEFAULT_INPUT_TOKENS: u64 = 11;

struct Args {
    input_tokens: u64,
    exit_on_stdin_eof: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        input_tokens: DEFAULT_INPUT_TOKENS,
        exit_on_stdin_eof: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--input-tokens" => {
                let value = it.next().context("--input-tokens needs a number")?;
                args.input_tokens = value
                    .parse()
                    .with_context(|| format!("--input-tokens: not a number: {value}"))?;
            }
            "--exit-on-stdin-eof" => args.exit_on_stdin_eof = true,
            "-h" | "--help" => {
                anyhow::bail!(
                    "usage: mock_providers [--input-tokens N] [--exit-on-stdin-eof]\n\
                     prints {{\"openai\":URL,\"anthropic\":URL,\"gemini\":URL,\"xai\":URL}} and serves until killed"
                )
            }
            other => anyhow::bail!("unknown argument: {other} (try --help)"),
        }
    }
    Ok(args)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn terminated() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}

/// Resolves when standard input reaches end of file (or fails). Reads on a
/// plain thread, which does not keep the process alive at exit.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let behavior = MockBehavior {
        input_tokens: Some(args.input_tokens),
        ..MockBehavior::default()
    };
    let start = |kind| MockProvider::start_with(kind, behavior.clone());
    let openai = start(MockKind::OpenAi)
        .await
        .context("starting OpenAI mock")?;
    let anthropic = start(MockKind::Anthropic)
        .await
        .context("starting Anthropic mock")?;
    let gemini = start(MockKind::Gemini)
        .await
        .context("starting Gemini mock")?;
    let xai = start(MockKind::Xai).await.context("starting xAI mock")?;

    let line = serde_json::json!({
        "openai": openai.base_url(),
        "anthropic": anthropic.base_url(),
        "gemini": gemini.base_url(),
        "xai": xai.base_url(),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").context("writing the URLs to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    if args.exit_on_stdin_eof {
        tokio::select! {
            r = terminated() => r?,
            () = stdin_closed() => {}
        }
    } else {
        terminated().await?;
    }
    drop((openai, anthropic, gemini, xai));
    Ok(())
}
