//! A streamed answer, metered: upstream SSE bytes go through the provider's
//! [`StreamTranslator`] to the client, and the hold is committed with the
//! usage when the stream ends — or, if the client goes away first, with what
//! was consumed so far (dropping this stream also drops the upstream
//! connection, aborting the call). Never $0 for work that happened.
//!
//! **Cut from outside.** A stream still running when its call reaches
//! [`super::Settings::call_limit`], or when the proxy's shutdown grace runs
//! out, ends there and is committed with what was consumed, while its hold
//! is still open and its thread can still record it. hyper polls a
//! response body only when it can write what the body gives: a client that
//! stops reading (a backgrounded app, a stalled network) leaves the body
//! unpolled, so no timer of its own would fire, the hold would expire
//! under a call the provider still works on, and its budget would be
//! spent twice. So each HTTP thread's [`Watchdog`] keeps the streams of its
//! thread and cuts them itself: it settles the hold, drops the provider's
//! connection, and wakes the body so that a client still reading gets the
//! cut-stream notice and the end.
//!
//! **Reasoning nobody saw.** OpenAI's reasoning models, Gemini 2.5 and
//! Grok 4 think before they answer without streaming the thinking, and
//! report its tokens only with the answer (OpenAI at the end, Gemini with
//! its first chunk). A stream cut before that report would be charged no
//! reasoning at all, so a user could start calls that think for a minute and
//! leave before the answer, again and again, with the app paying the
//! provider for every minute and the budget seeing only the prompts. So for
//! a model that reasons by default, a cut stream is charged, as reasoning,
//! the time from sending the call to its answer's first output (or to the
//! cut) at [`HiddenReasoning`]'s rate, within the output cap the call was
//! sent with. Marked estimated, like every count of a cut stream.
//!
//! **A client that stopped reading.** hyper stops polling the body once
//! what it holds for the client is full, so the provider's connection is
//! not read either: what the provider sent meanwhile (billed, since it was
//! generated) waits in the socket buffers, megabytes of it, uncounted. So a
//! stream that ends stalled (the send timeout closed the connection, or the
//! watchdog cuts it at its deadline: a client reading a trickle, or an
//! HTTP/2 client granting no window) is first drained ([`drain`]): its
//! provider connection is read on and counted, often to the provider's own
//! usage, before it is settled. Without it a client could stall every
//! stream and pay for the part read before the stall. A client that leaves
//! while reading, or while the provider is silent, is cut at once, so the
//! provider stops.
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
use crate::providers::{StreamTranslator, Usage};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, crate::upstream::BoxError>> + Send>>;

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
/// [`HiddenReasoning`]'s rate unless `TOLLGATE_HIDDEN_REASONING_TOKENS_PER_SEC`
/// sets one: above most reasoning models' published output speeds (OpenAI's
/// o-series and GPT-5 at 100–200 tokens a second, Gemini 2.5 Flash near
/// 250), and the time it is applied to includes reading the prompt and
/// the network, so a cut stream is rather charged more than it used than
/// less.
pub const HIDDEN_REASONING_TOKENS_PER_SEC: u64 = 250;
/// A stream that handed the server bytes this long ago and was not polled
/// since when it ended had a client that stopped reading ([`drain`]); one
/// that ended sooner after, or waiting for the provider, had a client that
/// left, and is cut at once so the provider stops.
const STALLED: Duration = Duration::from_secs(1);
/// [`drain`] ends when the provider sends nothing for this long (a window
/// update's round trip to a distant provider included)...
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// ... or after this long in all (and by the time the hold must be settled).
const DRAIN_AT_MOST: Duration = Duration::from_secs(1);
/// [`drain`] lets its thread's other tasks run after reading this much.
const DRAIN_SLICE_BYTES: usize = 64 * 1024;
/// The watchdog looks at its streams at least this often.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why a stream was cut short with the provider still sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The proxy's shutdown grace ran out.
    ShuttingDown,
    /// The call reached its deadline: its hold would expire under it.
    Deadline,
}

/// The response body: the metering itself is shared with the thread's
/// [`Watchdog`], which may end it while nothing polls this.
pub struct MeteredStream {
    metering: Arc<Mutex<Metering>>,
    watchdog: Watchdog,
    /// This stream's key in the watchdog's map.
    key: u64,
}

struct Metering {
    upstream: Upstream,
    translator: StreamTranslator,
    hold: Option<Hold>,
    charging: Charging,
    done: bool,
    /// The provider's body came to its end (not cut, not broken).
    provider_ended: bool,
    /// Translated bytes not yet handed to the server.
    batch: BytesMut,
    /// Polls spent waiting for the provider's connection since `batch` last grew.
    idle: u32,
    /// Polls spent waiting for the provider's connection for the current batch.
    turns: u32,
    /// The first batch, read by [`MeteredStream::prefetch`], not yet handed over.
    first: Option<Bytes>,
    /// Who polled last: woken when the watchdog ends the stream.
    waker: Option<Waker>,
    /// When the body last handed the server bytes, if it has not been
    /// polled since: the server owes it a poll, which a client that reads
    /// nothing holds back.
    owed_since: Option<Instant>,
    /// Being read by [`drain`], which owns the provider's connection.
    draining: bool,
    /// By when the hold must be settled ([`drain`] ends before).
    settle_by: Instant,
}

/// What a stream is charged by where the provider's report is missing.
#[derive(Debug, Default)]
pub struct Charging {
    pub price: Option<ModelPrice>,
    /// Our own prompt count, for streams cut before the provider reported usage.
    pub input_estimate: CountedInput,
    /// For a model that reasons without streaming it.
    pub hidden_reasoning: Option<HiddenReasoning>,
}

/// How a cut stream of a model that reasons without streaming its
/// reasoning is charged for it (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiddenReasoning {
    /// When the call was sent to the provider.
    pub sent_at: Instant,
    /// Tokens charged per second of thinking.
    pub tokens_per_sec: u64,
    /// The output cap the call was sent with, per choice: reasoning counts
    /// against it, so the provider cannot have spent more.
    pub cap: u64,
    /// Choices asked for (`n`): each reasons on its own.
    pub choices: u64,
    /// When the first output of the answer came.
    answer_began: Option<Instant>,
}

impl HiddenReasoning {
    pub fn new(sent_at: Instant, tokens_per_sec: u64, cap: u64, choices: u64) -> HiddenReasoning {
        HiddenReasoning {
            sent_at,
            tokens_per_sec,
            cap,
            choices: choices.max(1),
            answer_began: None,
        }
    }

    /// Adds the reasoning of a stream cut at `now` to `usage` (what was
    /// streamed, by every choice): each choice's thinking time, up to the
    /// answer's first output, at the rate, within what the caps leave. With
    /// several choices, one answering does not say the others stopped
    /// thinking: their clock runs to the cut.
    fn charge(&self, usage: &mut Usage, now: Instant) {
        let answered = match self.answer_began {
            Some(began) if self.choices == 1 => began,
            _ => now,
        };
        let thinking = answered.saturating_duration_since(self.sent_at);
        let tokens =
            (thinking.as_micros() * u128::from(self.tokens_per_sec) * u128::from(self.choices))
                .div_ceil(1_000_000);
        let cap = self.cap.saturating_mul(self.choices);
        let tokens = u64::try_from(tokens)
            .unwrap_or(u64::MAX)
            .min(cap.saturating_sub(usage.output_tokens));
        usage.output_tokens += tokens;
        usage.reasoning_tokens += tokens;
        usage.estimated = true;
    }
}

impl MeteredStream {
    /// Meters `upstream` until it ends, or until `deadline` or the
    /// shutdown cut-off, when `watchdog` ends it; settled by `settle_by`
    /// (after `deadline`, before the hold could expire).
    pub fn new(
        upstream: impl Stream<Item = Result<Bytes, crate::upstream::BoxError>> + Send + 'static,
        translator: StreamTranslator,
        hold: Hold,
        charging: Charging,
        watchdog: &Watchdog,
        deadline: Instant,
        settle_by: Instant,
    ) -> Self {
        Self::with(
            Box::pin(upstream),
            translator,
            Some(hold),
            charging,
            watchdog,
            deadline,
            settle_by,
        )
    }

    fn with(
        upstream: Upstream,
        translator: StreamTranslator,
        hold: Option<Hold>,
        charging: Charging,
        watchdog: &Watchdog,
        deadline: Instant,
        settle_by: Instant,
    ) -> Self {
        let metering = Arc::new(Mutex::new(Metering {
            upstream,
            translator,
            hold,
            charging,
            done: false,
            provider_ended: false,
            batch: BytesMut::new(),
            idle: 0,
            turns: 0,
            first: None,
            waker: None,
            owed_since: None,
            draining: false,
            settle_by,
        }));
        let key = watchdog.watch(deadline, Arc::downgrade(&metering));
        // Its send raced the cut-off, which the watchdog has already acted on.
        if watchdog.0.cut_off.is_cancelled() {
            lock(&metering).cut(Cut::ShuttingDown);
        }
        MeteredStream {
            metering,
            watchdog: watchdog.clone(),
            key,
        }
    }

    fn metering(&self) -> MutexGuard<'_, Metering> {
        lock(&self.metering)
    }

    /// Reads what the provider has already sent (giving its connection
    /// [`IDLE_TURNS`] turns of this thread if nothing is there yet), so it is
    /// the first thing the server gets and goes out with the response's
    /// head. Returns at once when the provider has sent nothing yet: a
    /// stream's head is never held back waiting for a model to start.
    pub async fn prefetch(&mut self) {
        let mut empty_turns = 0;
        std::future::poll_fn(|cx| {
            let mut m = self.metering();
            match m.poll_batch(cx) {
                Poll::Ready(Some(bytes)) => {
                    m.first = Some(bytes);
                    Poll::Ready(())
                }
                Poll::Ready(None) => Poll::Ready(()),
                // Batching: it asked to be polled again and stops by itself.
                Poll::Pending if !m.batch.is_empty() => Poll::Pending,
                Poll::Pending if empty_turns < IDLE_TURNS => {
                    empty_turns += 1;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Ready(()),
            }
        })
        .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks panics; if something did, the state is
    // still the best account of what was consumed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metering {
    fn settle(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        let mut usage = self.translator.usage_so_far();
        self.charging.input_estimate.fill_missing(&mut usage);
        if self.translator.upstream_failed() && usage.output_tokens == 0 {
            hold.release("upstream_error");
            return;
        }
        // Cut before the provider counted any output: its reasoning is not
        // in what was streamed. A stream the provider ended without a count
        // (a blocked prompt) is not charged reasoning; one with a choice
        // finished but not the stream (`n` > 1) is.
        if let Some(hidden) = &self.charging.hidden_reasoning {
            if !self.provider_ended && !self.translator.output_reported() {
                hidden.charge(&mut usage, Instant::now());
            }
        }
        if usage.estimated {
            tracing::info!(reservation_id = %hold.reservation_id(), output_tokens = usage.output_tokens, "stream ended early; committing what was consumed");
        }
        hold.commit(actual(&usage, self.charging.price.as_ref()));
    }

    /// Ends the stream: its last translated bytes join the batch, the hold
    /// is settled and the provider's connection dropped.
    fn finish(&mut self) {
        self.done = true;
        let tail = self.translator.finish();
        self.batch.extend_from_slice(&tail);
        self.settle();
        self.upstream = Box::pin(futures::stream::empty());
    }

    /// Ends a stream the provider is still sending, from outside its poll.
    fn cut(&mut self, why: Cut) {
        if self.done || self.draining {
            return;
        }
        self.warn_cut(why);
        self.finish();
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn warn_cut(&self, why: Cut) {
        match why {
            Cut::ShuttingDown => tracing::warn!(
                "shutting down: a stream still running ends here, charged what it consumed"
            ),
            Cut::Deadline => tracing::warn!(
                "a stream would outlive its hold (TOLLGATE_HOLD_TTL_MS): it ends here, charged what it consumed"
            ),
        }
    }

    /// What is batched, for the server to write; `None` if nothing is.
    fn take_batch(&mut self) -> Option<Bytes> {
        self.idle = 0;
        self.turns = 0;
        (!self.batch.is_empty()).then(|| self.batch.split().freeze())
    }

    /// Translates and counts a chunk from the provider.
    fn read(&mut self, chunk: &[u8]) -> Bytes {
        let out = self.translator.push(chunk);
        if let Some(hidden) = &mut self.charging.hidden_reasoning {
            if hidden.answer_began.is_none() && self.translator.output_started() {
                hidden.answer_began = Some(Instant::now());
            }
        }
        out
    }

    /// Reads what the provider sends for [`drain`], until it ends or goes
    /// quiet; the client's part is dropped.
    fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        quiet: Pin<&mut tokio::time::Sleep>,
        end: Instant,
    ) -> Poll<()> {
        let mut quiet = quiet;
        let mut read = 0;
        loop {
            if self.hold.is_none() || self.translator.is_finished() {
                return Poll::Ready(());
            }
            match self.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.read(&chunk);
                    let now = Instant::now();
                    if now >= end {
                        return Poll::Ready(());
                    }
                    quiet.as_mut().reset(now + DRAIN_QUIET);
                    read += chunk.len();
                    if read >= DRAIN_SLICE_BYTES {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(()),
                Poll::Ready(None) => {
                    self.provider_ended = true;
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    return if std::future::Future::poll(quiet.as_mut(), cx).is_ready()
                        || Instant::now() >= end
                    {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }

    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        if self.draining {
            // [`drain`] reads the provider, and wakes this when it is done.
            return Poll::Pending;
        }
        loop {
            if self.done {
                return Poll::Ready(self.take_batch());
            }
            match self.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = self.read(&chunk);
                    if !out.is_empty() {
                        self.batch.extend_from_slice(&out);
                        self.idle = 0;
                    }
                    if self.translator.is_finished() {
                        // It ended the stream itself (an oversized event):
                        // settle, and stop reading the provider.
                        self.finish();
                        continue;
                    }
                    if self.batch.len() >= BATCH_BYTES {
                        return Poll::Ready(self.take_batch());
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    self.finish();
                }
                Poll::Ready(None) => {
                    self.provider_ended = true;
                    self.finish();
                }
                Poll::Pending => {
                    if self.batch.is_empty() {
                        return Poll::Pending;
                    }
                    if self.idle < IDLE_TURNS && self.turns < BATCH_TURNS {
                        // The provider's connection may hold more, already
                        // read: let it run (it was woken by the poll above),
                        // then look again.
                        self.idle += 1;
                        self.turns += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    return Poll::Ready(self.take_batch());
                }
            }
        }
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut m = self.metering();
        let polled = m.poll_batch(cx);
        m.owed_since = matches!(polled, Poll::Ready(Some(_))).then(Instant::now);
        polled.map(|b| b.map(Ok))
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        self.watchdog.forget(self.key);
        let mut m = self.metering();
        if m.done || m.draining || m.hold.is_none() {
            return;
        }
        let stalled = m.owed_since.is_some_and(|t| t.elapsed() >= STALLED);
        if !stalled || !start_drain(&mut m, &self.metering, false) {
            // The client went away mid-stream: commit what was consumed.
            m.settle();
        }
    }
}

/// Hands `metering`'s stream to [`drain`] on its hold's task tracker (which
/// shutdown waits for); false if it cannot be (no hold, no runtime).
fn start_drain(m: &mut Metering, metering: &Arc<Mutex<Metering>>, client_waits: bool) -> bool {
    let Some(tracker) = m.hold.as_ref().map(|h| h.tracker().clone()) else {
        return false;
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    m.draining = true;
    tracker.spawn(drain(Settles {
        metering: metering.clone(),
        client_waits,
    }));
    true
}

/// Ends the stream when dropped, however [`drain`] ended (its task dropped
/// at shutdown included): settled, never left to expire nor released; a
/// client still there gets the cut-stream notice and the end.
struct Settles {
    metering: Arc<Mutex<Metering>>,
    client_waits: bool,
}

impl Drop for Settles {
    fn drop(&mut self) {
        let mut m = lock(&self.metering);
        m.draining = false;
        m.finish();
        if !self.client_waits {
            m.batch.clear();
        } else if let Some(waker) = m.waker.take() {
            waker.wake();
        }
    }
}

/// Reads on what the provider sends to a stalled stream, until it ends,
/// sends nothing for [`DRAIN_QUIET`], or [`DRAIN_AT_MOST`] passes (or the
/// time to settle comes); then ends it with all it counted (see the
/// module's notes).
async fn drain(stream: Settles) {
    let end = {
        let m = lock(&stream.metering);
        (Instant::now() + DRAIN_AT_MOST).min(m.settle_by)
    };
    let quiet = tokio::time::sleep(DRAIN_QUIET);
    tokio::pin!(quiet);
    std::future::poll_fn(|cx| lock(&stream.metering).poll_drain(cx, quiet.as_mut(), end)).await;
}

/// One per HTTP thread: ends that thread's streams at their deadline, and
/// all of them when the shutdown grace runs out, whether or not anything
/// polls them (see the module's notes). Cheap to clone.
#[derive(Clone)]
pub struct Watchdog(Arc<Watched>);

struct Watched {
    streams: Mutex<Streams>,
    cut_off: CancellationToken,
}

#[derive(Default)]
struct Streams {
    next_key: u64,
    by_key: HashMap<u64, (Instant, Weak<Mutex<Metering>>)>,
}

impl Watchdog {
    /// Starts this thread's watchdog (on the current runtime). It sleeps
    /// until the earliest deadline of its streams, looking again at least
    /// every `every` (at most [`WATCH_EVERY`]) for streams started since:
    /// with `every` shorter than any call's limit, each is cut at its
    /// deadline, or up to half of `every` before it, with others due then.
    /// It stops after cutting every stream when `cut_off` is cancelled.
    pub fn start(cut_off: CancellationToken, every: Duration) -> Watchdog {
        let watchdog = Watchdog(Arc::new(Watched {
            streams: Mutex::default(),
            cut_off: cut_off.clone(),
        }));
        let every = every.clamp(Duration::from_millis(1), WATCH_EVERY);
        let watched = Arc::downgrade(&watchdog.0);
        tokio::spawn(async move {
            let mut wake_at = Instant::now() + every;
            loop {
                let shutting_down = tokio::select! {
                    biased;
                    () = cut_off.cancelled() => true,
                    () = tokio::time::sleep_until(wake_at) => false,
                };
                let Some(watched) = watched.upgrade() else {
                    return;
                };
                let now = Instant::now();
                // Streams due within half a look are cut now, a little early,
                // rather than waking once for each.
                let (due, next) = watched.take_due((!shutting_down).then_some(now + every / 2));
                let why = if shutting_down {
                    Cut::ShuttingDown
                } else {
                    Cut::Deadline
                };
                for metering in due {
                    // A panic in one stream's translator must not leave every
                    // other stream of this thread uncut.
                    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut m = lock(&metering);
                        // A stream at its deadline has a client too slow for
                        // it: what the provider sent meanwhile is counted
                        // first. At shutdown there is no time for that.
                        if why == Cut::Deadline
                            && !m.done
                            && !m.draining
                            && start_drain(&mut m, &metering, true)
                        {
                            m.warn_cut(why);
                            return;
                        }
                        m.cut(why);
                    }));
                    if cut.is_err() {
                        tracing::error!("cutting a stream panicked; its hold is left to expire");
                    }
                }
                if shutting_down {
                    return;
                }
                wake_at = next.map_or(now + every, |next| next.min(now + every));
            }
        });
        watchdog
    }

    fn watch(&self, deadline: Instant, metering: Weak<Mutex<Metering>>) -> u64 {
        let mut streams = lock(&self.0.streams);
        let key = streams.next_key;
        streams.next_key += 1;
        streams.by_key.insert(key, (deadline, metering));
        key
    }

    fn forget(&self, key: u64) {
        lock(&self.0.streams).by_key.remove(&key);
    }

    /// Streams being watched (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0.streams).by_key.len()
    }
}

impl Watched {
    /// Takes out the live streams whose deadline is at or before `now`
    /// (every one with `None`), to be cut out of the lock; and the earliest
    /// deadline of those left.
    fn take_due(&self, now: Option<Instant>) -> (Vec<Arc<Mutex<Metering>>>, Option<Instant>) {
        let mut streams = lock(&self.streams);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        streams.by_key.retain(|_, (deadline, metering)| {
            if now.is_none_or(|now| *deadline <= now) {
                due.extend(metering.upgrade());
                return false;
            }
            next = Some(next.map_or(*deadline, |n| n.min(*deadline)));
            true
        });
        (due, next)
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

    /// A runtime whose context the tests poll in by hand (a timer and the
    /// watchdog need one).
    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
            std::sync::LazyLock::new(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap()
            });
        &RUNTIME
    }

    /// A metered stream with no hold, over `upstream`, ended by `watchdog`
    /// at `deadline`.
    fn watched(
        upstream: impl Stream<Item = Result<Bytes, crate::upstream::BoxError>> + Send + 'static,
        watchdog: &Watchdog,
        deadline: Instant,
    ) -> MeteredStream {
        MeteredStream::with(
            Box::pin(upstream),
            StreamTranslator::new(ProviderKind::OpenAi, false, "gpt-4o-mini"),
            None,
            Charging::default(),
            watchdog,
            deadline,
            deadline,
        )
    }

    /// A metered stream with no hold, over `upstream`, that nothing cuts.
    fn metered(
        upstream: impl Stream<Item = Result<Bytes, crate::upstream::BoxError>> + Send + 'static,
    ) -> MeteredStream {
        let _context = runtime().enter();
        let watchdog = Watchdog::start(CancellationToken::new(), WATCH_EVERY);
        watched(
            upstream,
            &watchdog,
            Instant::now() + Duration::from_secs(3600),
        )
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Like hyper's client body read from hyper's HTTP/1 server: each chunk
    /// is ready only after two polls that found it pending.
    fn turns_per_chunk(
        chunks: Vec<Bytes>,
    ) -> impl Stream<Item = Result<Bytes, crate::upstream::BoxError>> {
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

    #[test]
    fn hidden_reasoning_is_the_thinking_time_within_the_cap() {
        let sent_at = Instant::now();
        let at = |ms: u64| sent_at + Duration::from_millis(ms);
        let charged = |hidden: HiddenReasoning, streamed: u64, cut: Instant| {
            let mut usage = Usage {
                output_tokens: streamed,
                ..Usage::default()
            };
            hidden.charge(&mut usage, cut);
            assert!(usage.estimated);
            assert_eq!(usage.reasoning_tokens, usage.output_tokens - streamed);
            usage.output_tokens
        };
        let thinking = HiddenReasoning::new(sent_at, 250, 25_000, 1);
        assert_eq!(
            charged(thinking, 0, at(2_000)),
            500,
            "two seconds, nothing streamed"
        );
        assert_eq!(charged(thinking, 0, at(1)), 1, "a started token is charged");
        assert_eq!(charged(thinking, 0, sent_at), 0);
        let answered = HiddenReasoning {
            answer_began: Some(at(1_200)),
            ..thinking
        };
        assert_eq!(
            charged(answered, 30, at(60_000)),
            300 + 30,
            "the clock stops at the answer's first output"
        );
        let capped = HiddenReasoning::new(sent_at, 250, 100, 1);
        assert_eq!(charged(capped, 40, at(2_000)), 100, "within the cap");
        assert_eq!(charged(capped, 140, at(2_000)), 140, "past it already");
        let three = HiddenReasoning::new(sent_at, 250, 1_000, 3);
        assert_eq!(
            charged(three, 30, at(2_000)),
            1_500 + 30,
            "each choice thinks"
        );
        assert_eq!(
            charged(three, 30, at(8_000)),
            3_000,
            "within each choice's cap"
        );
        let one_answered = HiddenReasoning {
            answer_began: Some(at(400)),
            ..three
        };
        assert_eq!(
            charged(one_answered, 30, at(2_000)),
            1_500 + 30,
            "one choice answering does not stop the others' clock"
        );
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
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<Bytes, crate::upstream::BoxError>>();
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

    /// A provider still generating, whose stream is dropped when the
    /// proxy drops its side: `dropped` tells when.
    fn endless() -> (
        impl Stream<Item = Result<Bytes, crate::upstream::BoxError>> + Send + 'static,
        Arc<AtomicBool>,
    ) {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let mut sent = false;
        let upstream = futures::stream::poll_fn(move |_| {
            let _owned = &flag;
            if sent {
                Poll::Pending
            } else {
                sent = true;
                Poll::Ready(Some(Ok(event(0))))
            }
        });
        (upstream, dropped)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_nothing_polls_is_cut_at_its_deadline() {
        // A client that stopped reading: hyper stops polling the body, so
        // only the watchdog can end the call before its hold expires.
        let watchdog = Watchdog::start(CancellationToken::new(), WATCH_EVERY);
        let (upstream, dropped) = endless();
        let started = Instant::now();
        let mut stream = watched(upstream, &watchdog, started + Duration::from_millis(2700));
        stream.prefetch().await;
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Some(Ok(first))) = stream.poll_next_unpin(&mut cx) else {
            panic!("the first event was not ready");
        };
        assert_eq!(first, event(0));
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        // Not polled from here on. Past two of the watchdog's looks (the
        // second cuts what is due within half a look: not this one), just
        // before the deadline: still running.
        tokio::time::sleep_until(started + Duration::from_millis(2650)).await;
        assert!(!dropped.load(Ordering::SeqCst), "cut before its deadline");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // At the deadline, not at the watchdog's next look (3 s).
        tokio::time::sleep_until(started + Duration::from_millis(2750)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the provider's connection is dropped at the deadline"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the body is woken");
        assert_eq!(watchdog.len(), 0, "a cut stream is no longer watched");
        let Poll::Ready(Some(Ok(tail))) = stream.poll_next_unpin(&mut cx) else {
            panic!("no notice after the cut");
        };
        let tail = String::from_utf8(tail.to_vec()).unwrap();
        assert!(
            tail.contains("ended before the answer was complete"),
            "{tail}"
        );
        assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
        assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_is_no_longer_watched() {
        let watchdog = Watchdog::start(CancellationToken::new(), WATCH_EVERY);
        let far = Instant::now() + Duration::from_secs(3600);
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        let stream = watched(
            futures::stream::iter([Ok(event(0)), Ok(done.clone())]),
            &watchdog,
            far,
        );
        assert_eq!(watchdog.len(), 1);
        let all: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        assert_eq!(all.concat(), [event(0), done].concat());
        assert_eq!(watchdog.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_before_their_deadline_are_left_alone_until_the_cut_off() {
        let cut_off = CancellationToken::new();
        let watchdog = Watchdog::start(cut_off.clone(), Duration::from_millis(10));
        let far = Instant::now() + Duration::from_secs(3600);
        let (a, a_dropped) = endless();
        let (b, b_dropped) = endless();
        let (first, second) = (watched(a, &watchdog, far), watched(b, &watchdog, far));
        assert_eq!(watchdog.len(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!a_dropped.load(Ordering::SeqCst) && !b_dropped.load(Ordering::SeqCst));
        cut_off.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(a_dropped.load(Ordering::SeqCst) && b_dropped.load(Ordering::SeqCst));
        // One that starts after the cut-off ends at once.
        let (c, c_dropped) = endless();
        let third = watched(c, &watchdog, far);
        assert!(c_dropped.load(Ordering::SeqCst));
        for stream in [first, second, third] {
            let all: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
            let all = String::from_utf8(all.concat()).unwrap();
            assert!(all.ends_with("data: [DONE]\n\n"), "{all}");
        }
        assert_eq!(watchdog.len(), 0);
    }
}
