//! A streamed answer, metered: upstream SSE bytes go through the provider's
//! [`StreamTranslator`] to the client, and the hold is committed with the
//! usage when the stream ends — or, if the client goes away first, with what
//! was consumed so far (dropping this stream also drops the upstream
//! connection, aborting the call). Never $0 for work that happened. A stream
//! still running when the proxy's shutdown grace runs out ends there and is
//! committed with what was consumed, while its thread can still record it.
//!
//! **Batching.** The provider's client hands its answer over one chunk at a
//! time, decoding the next only once the last was taken, and the server
//! writes to the client (one `writev`, its loopback delivery included)
//! whenever this stream has nothing more ready. A stream whose events had
//! all arrived was written in one write per event: 14 per request in
//! `proxy-bench` at 16 clients, a quarter of the proxy threads' CPU. So
//! after a chunk, this stream lets the provider's connection run before
//! answering, and answers with everything it decoded meanwhile: a
//! few task switches on the same thread, where each write saved is a system
//! call. A chunk that arrives alone (a provider still generating) goes out
//! after [`IDLE_TURNS`] polls.
//!
//! **The head with the first events.** The server writes the response's
//! head as soon as the body first has nothing ready, so a stream read only
//! by the server went out in at least two writes, head then events (4.6
//! `writev` per streamed request on the proxy's threads at 16 clients, 2.5
//! for a JSON answer). [`MeteredStream::prefetch`] reads what the provider
//! has already sent before the response is handed over: the head, those
//! events and, for an answer that arrived whole, its end go out together.

use crate::estimate::{actual, CountedInput};
use crate::hold::Hold;
use crate::pricing::ModelPrice;
use crate::providers::StreamTranslator;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

/// At most this much is held back to be written together.
const BATCH_BYTES: usize = 64 * 1024;
/// At most this many polls are spent waiting for the provider's connection in one
/// batch, so a provider streaming faster than it is read cannot hold the
/// client's bytes back for long.
const BATCH_TURNS: u32 = 64;
/// Polls without a new chunk before the batch goes out. hyper's HTTP/1
/// server polls a body twice in one pass of its connection's task (the
/// second to re-check a pending write, `proto/h1/dispatch.rs`), so it takes
/// two for the scheduler to run the provider's connection once in between.
/// Measured: with one, `proxy-bench` at 16 clients still wrote one batch per
/// event, and `a_stream_that_arrived_whole_goes_out_in_one_piece` fails.
const IDLE_TURNS: u32 = 2;

pub struct MeteredStream {
    upstream: Upstream,
    translator: StreamTranslator,
    hold: Option<Hold>,
    price: Option<ModelPrice>,
    /// Our own prompt count, for streams cut before the provider reported usage.
    input_estimate: CountedInput,
    /// Ready when the stream must end now (shutdown).
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Ready when the call must end before its hold could expire
    /// ([`super::Settings::call_limit`]).
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// Translated bytes not yet handed to the server.
    batch: BytesMut,
    /// Polls spent waiting for the provider's connection since `batch` last grew.
    idle: u32,
    /// Polls spent waiting for the provider's connection for the current batch.
    turns: u32,
    /// The first batch, read by [`MeteredStream::prefetch`], not yet handed over.
    first: Option<Bytes>,
}

impl MeteredStream {
    pub fn new(
        upstream: impl Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
        translator: StreamTranslator,
        hold: Hold,
        price: Option<ModelPrice>,
        input_estimate: CountedInput,
        cut_off: CancellationToken,
        deadline: tokio::time::Instant,
    ) -> Self {
        MeteredStream {
            upstream: Box::pin(upstream),
            translator,
            hold: Some(hold),
            price,
            input_estimate,
            cut_off: Box::pin(cut_off.cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
            batch: BytesMut::new(),
            idle: 0,
            turns: 0,
            first: None,
        }
    }

    /// Reads what the provider has already sent (giving its connection
    /// [`IDLE_TURNS`] turns of this thread if nothing is there yet), so it is
    /// the first thing the server gets and goes out with the response's
    /// head. Returns at once when the provider has sent nothing yet: a
    /// stream's head is never held back waiting for a model to start.
    pub async fn prefetch(&mut self) {
        let mut empty_turns = 0;
        std::future::poll_fn(|cx| match Pin::new(&mut *self).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.first = Some(bytes);
                Poll::Ready(())
            }
            Poll::Ready(_) => Poll::Ready(()),
            // Batching: it asked to be polled again and stops by itself.
            Poll::Pending if !self.batch.is_empty() => Poll::Pending,
            Poll::Pending if empty_turns < IDLE_TURNS => {
                empty_turns += 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Ready(()),
        })
        .await;
    }

    fn settle(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        let mut usage = self.translator.usage_so_far();
        self.input_estimate.fill_missing(&mut usage);
        if self.translator.upstream_failed() && usage.output_tokens == 0 {
            hold.release("upstream_error");
            return;
        }
        if usage.estimated {
            tracing::info!(reservation_id = %hold.reservation_id(), output_tokens = usage.output_tokens, "stream ended early; committing what was consumed");
        }
        hold.commit(actual(&usage, self.price.as_ref()));
    }

    /// Ends the stream: its last translated bytes join the batch.
    fn finish(&mut self) {
        self.done = true;
        let tail = self.translator.finish();
        self.batch.extend_from_slice(&tail);
        self.settle();
    }

    /// What is batched, for the server to write; `None` if nothing is.
    fn take_batch(&mut self) -> Option<Bytes> {
        self.idle = 0;
        self.turns = 0;
        (!self.batch.is_empty()).then(|| self.batch.split().freeze())
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            if this.done {
                return Poll::Ready(this.take_batch().map(Ok));
            }
            if this.cut_off.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    "shutting down: a stream still running ends here, charged what it consumed"
                );
                this.finish();
                continue;
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    "a stream would outlive its hold (TOLLGATE_HOLD_TTL_MS): it ends here, charged what it consumed"
                );
                this.finish();
                continue;
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.translator.push(&chunk);
                    if !out.is_empty() {
                        this.batch.extend_from_slice(&out);
                        this.idle = 0;
                    }
                    if this.translator.is_finished() {
                        // It ended the stream itself (an oversized event):
                        // settle, and stop reading the provider.
                        this.finish();
                        continue;
                    }
                    if this.batch.len() >= BATCH_BYTES {
                        return Poll::Ready(this.take_batch().map(Ok));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    this.finish();
                }
                Poll::Ready(None) => this.finish(),
                Poll::Pending => {
                    if this.batch.is_empty() {
                        return Poll::Pending;
                    }
                    if this.idle < IDLE_TURNS && this.turns < BATCH_TURNS {
                        // The provider's connection may hold more, already
                        // read: let it run (it was woken by the poll above),
                        // then look again.
                        this.idle += 1;
                        this.turns += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    return Poll::Ready(this.take_batch().map(Ok));
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        // The client went away mid-stream: commit what was consumed.
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderKind;
    use futures::StreamExt as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    fn event(i: usize) -> Bytes {
        Bytes::from(format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ))
    }

    /// A metered stream with no hold, over `upstream`.
    fn metered(
        upstream: impl Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
    ) -> MeteredStream {
        MeteredStream {
            upstream: Box::pin(upstream),
            translator: StreamTranslator::new(ProviderKind::OpenAi, false, "gpt-4o-mini"),
            hold: None,
            price: None,
            input_estimate: CountedInput::default(),
            cut_off: Box::pin(CancellationToken::new().cancelled_owned()),
            // Far off; made in a runtime's context, which a timer needs,
            // while the tests poll by hand.
            deadline: {
                static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
                    std::sync::LazyLock::new(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_time()
                            .build()
                            .unwrap()
                    });
                let _context = RUNTIME.enter();
                Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600)))
            },
            done: false,
            batch: BytesMut::new(),
            idle: 0,
            turns: 0,
            first: None,
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Like hyper's client body read from hyper's HTTP/1 server: each chunk
    /// is ready only after two polls that found it pending.
    fn turns_per_chunk(chunks: Vec<Bytes>) -> impl Stream<Item = Result<Bytes, hyper::Error>> {
        let mut chunks = chunks.into_iter();
        let mut waited = 0;
        futures::stream::poll_fn(move |cx| {
            if waited < 2 {
                waited += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            waited = 0;
            Poll::Ready(chunks.next().map(Ok))
        })
    }

    #[tokio::test]
    async fn events_already_read_go_to_the_client_in_one_write() {
        let mut chunks: Vec<Bytes> = (0..20).map(event).collect();
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let expected: Vec<u8> = chunks.concat();
        let writes: Vec<Bytes> = metered(turns_per_chunk(chunks))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(writes.len(), 1, "one write for 21 events ready at once");
        assert_eq!(writes.concat(), expected, "passed through unchanged");
    }

    #[tokio::test]
    async fn what_arrived_before_the_head_goes_out_with_it() {
        let mut chunks: Vec<Bytes> = (0..5).map(event).collect();
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let expected: Vec<u8> = chunks.concat();
        let mut stream = metered(turns_per_chunk(chunks));
        stream.prefetch().await;
        // The server's first poll, right after it encoded the head, finds
        // the whole answer and then its end: nothing makes it write the
        // head alone.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(all))) => assert_eq!(all, expected),
            other => panic!("the answer was not ready with the head: {other:?}"),
        }
        assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_stream_that_ends_during_prefetch_goes_out_ended() {
        // The provider's body ends before any event: the client still gets
        // the error event and `[DONE]`, with the head, and then the end.
        let mut stream = metered(futures::stream::empty());
        stream.prefetch().await;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some(Ok(all))) = stream.poll_next_unpin(&mut cx) else {
            panic!("the end of the stream was not ready with the head");
        };
        let text = String::from_utf8(all.to_vec()).unwrap();
        assert!(text.contains("server_error"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_provider_that_has_sent_nothing_yet_does_not_hold_the_head() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, hyper::Error>>();
        let mut stream = metered(rx);
        // Returns although nothing came: the head goes out now.
        stream.prefetch().await;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        tx.unbounded_send(Ok(event(0))).unwrap();
        drop(tx);
        let rest: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        let rest = rest.concat();
        assert!(rest.starts_with(&event(0)), "{rest:?}");
    }

    #[test]
    fn a_chunk_that_arrives_alone_is_not_held_back() {
        // The provider's second event is not there yet: nothing wakes the
        // stream until it comes.
        let second_ready = Arc::new(AtomicBool::new(false));
        let mut sent = 0;
        let ready = second_ready.clone();
        let upstream = futures::stream::poll_fn(move |_| match sent {
            0 => {
                sent = 1;
                Poll::Ready(Some(Ok(event(0))))
            }
            1 if ready.load(Ordering::Relaxed) => {
                sent = 2;
                Poll::Ready(Some(Ok(event(1))))
            }
            // Still generating.
            _ => Poll::Pending,
        });
        let mut stream = metered(upstream);
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        // Turns for the provider's connection, each asking to be polled again...
        for turn in 1..=IDLE_TURNS {
            assert!(stream.poll_next_unpin(&mut cx).is_pending());
            assert_eq!(wakes.0.load(Ordering::Relaxed), turn as usize);
        }
        // ...and with nothing more come, the first event goes out.
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(first))) => assert_eq!(first, event(0)),
            other => panic!("the first event was held back: {other:?}"),
        }
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        second_ready.store(true, Ordering::Relaxed);
        for _ in 0..IDLE_TURNS {
            assert!(stream.poll_next_unpin(&mut cx).is_pending());
        }
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(second))) => assert_eq!(second, event(1)),
            other => panic!("the second event was held back: {other:?}"),
        }
    }
}
