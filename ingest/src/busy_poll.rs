//! Busy-polling an HTTP thread while the process is nearly idle.
//!
//! A request to an idle process waits for several wake-ups: the request
//! arrives, the ack of its append arrives, and in the proxy the provider's
//! answer and the settlement's ack arrive. Each finds the HTTP thread asleep
//! in `epoll_wait`, and on a VM whose idle virtual CPUs halt at once (this
//! one boots with `haltpoll.guest_halt_poll_ns=0`) every such wake-up is an
//! inter-processor interrupt and a VM exit and entry: tens of µs each,
//! measured as a third of the reserve latency at one client.
//!
//! So while the whole process has at most one request in flight, the thread
//! serving it keeps polling its sockets instead of sleeping, for at most
//! [`BusyPoll::window`] after a request on it started or ended (the next
//! request of a keep-alive client usually comes within that). It is Linux's
//! `busy_poll` idea at the runtime's level: a tokio task that yields in a
//! loop makes the current-thread scheduler poll its I/O driver with a zero
//! timeout between turns, and `sched_yield` before each turn lets another
//! thread that is ready to run on the same core have it.
//!
//! It costs CPU only when the process is nearly idle, and at most one core:
//!
//! - Only one thread in the process spins at a time (a token).
//! - Once two requests are in flight it stops: a busy process's threads seldom
//!   sleep, and a spinning thread would take a core from nats-server and
//!   PostgreSQL.
//! - A request that waits longer than the window (a slow provider) is waited
//!   for asleep.
//!
//! A request counts as in flight until its response head is ready; a streamed
//! body goes on uncounted. Its chunks come from a provider milliseconds
//! apart, far too slow to poll for.
//!
//! Nothing wakes a sleeping thread when polling becomes right for it because
//! of another thread (the token is given back, or the other thread's request
//! ended): that wake-up would cost the interrupt this saves. It polls again
//! from its next request.
//!
//! `TOLLGATE_BUSY_POLL_US=0` turns it off.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a thread polls after a request on it started or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    pub window: Duration,
}

impl BusyPoll {
    /// `TOLLGATE_BUSY_POLL_US` unset. Measured with `tollgate-bench ingest` and `proxy-bench` at one
    /// client: a reserve's append is acknowledged within ≈ 0.1–0.2 ms of the
    /// request, and a client's next request comes ≈ 0.05 ms after an answer.
    pub const DEFAULT_MICROS: u64 = 500;
    pub const DEFAULT: BusyPoll = BusyPoll {
        window: Duration::from_micros(Self::DEFAULT_MICROS),
    };

    /// Never polls: threads sleep whenever they have nothing to run.
    pub const OFF: BusyPoll = BusyPoll {
        window: Duration::ZERO,
    };

    /// From a number of µs, as `TOLLGATE_BUSY_POLL_US` gives it (0: off).
    pub fn from_micros(us: u64) -> BusyPoll {
        BusyPoll {
            window: Duration::from_micros(us.min(1_000_000)),
        }
    }

    pub fn is_off(self) -> bool {
        self.window.is_zero()
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll::DEFAULT
    }
}

/// Requests in flight on every HTTP thread of the process that polls.
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

/// The thread that holds the right to spin, or [`NOBODY`].
static SPINNER: AtomicUsize = AtomicUsize::new(NOBODY);
const NOBODY: usize = 0;
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static LOCAL: Local = Local {
        polling: Cell::new(false),
        in_flight: Cell::new(0),
        last_activity: Cell::new(None),
        wake: Arc::new(Notify::new()),
    };
}

struct Local {
    /// Set once this thread runs [`poll_while_idle`]; requests on other
    /// threads are not counted.
    polling: Cell<bool>,
    in_flight: Cell<u32>,
    /// When a request on this thread last started or ended.
    last_activity: Cell<Option<Instant>>,
    /// Woken when a request starts or ends on this thread.
    wake: Arc<Notify>,
}

/// Whether a thread should poll rather than sleep: the process has at most
/// one request in flight, it is this thread's (or there is none), and this
/// thread saw a request start or end within the window.
fn should_poll(
    process: u32,
    thread: u32,
    since_activity: Option<Duration>,
    window: Duration,
) -> bool {
    process <= 1 && thread == process && since_activity.is_some_and(|d| d < window)
}

/// Runs on an HTTP thread's runtime for as long as the thread serves.
pub(crate) async fn poll_while_idle(policy: BusyPoll) {
    if policy.is_off() {
        return;
    }
    let me = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    let _release = Release(me);
    let wake = LOCAL.with(|l| {
        l.polling.set(true);
        l.wake.clone()
    });
    loop {
        let poll = LOCAL.with(|l| {
            should_poll(
                IN_FLIGHT.load(Ordering::Relaxed),
                l.in_flight.get(),
                l.last_activity.get().map(|t| t.elapsed()),
                policy.window,
            )
        });
        if poll && take(me) {
            std::thread::yield_now();
            // Deferred by the scheduler until it has polled the I/O driver
            // without blocking.
            tokio::task::yield_now().await;
            continue;
        }
        release(me);
        wake.notified().await;
    }
}

fn take(me: usize) -> bool {
    match SPINNER.compare_exchange(NOBODY, me, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => true,
        Err(holder) => holder == me,
    }
}

fn release(me: usize) {
    let _ = SPINNER.compare_exchange(me, NOBODY, Ordering::Relaxed, Ordering::Relaxed);
}

/// Gives the token back when the thread's runtime drops the polling task.
struct Release(usize);

impl Drop for Release {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Counts a request as in flight on this thread until dropped.
struct InFlight {
    counted: bool,
}

impl InFlight {
    fn start() -> InFlight {
        let counted = LOCAL.with(|l| {
            if !l.polling.get() {
                return false;
            }
            l.in_flight.set(l.in_flight.get() + 1);
            l.last_activity.set(Some(Instant::now()));
            // Only a lone request can start polling; waking the poller for
            // any other would cost a busy thread a task switch per request.
            if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) == 0 {
                l.wake.notify_one();
            }
            true
        });
        InFlight { counted }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let idle = IN_FLIGHT.fetch_sub(1, Ordering::Relaxed) == 1;
        LOCAL.with(|l| {
            debug_assert!(l.in_flight.get() > 0, "a request ended on another thread");
            l.in_flight.set(l.in_flight.get().saturating_sub(1));
            l.last_activity.set(Some(Instant::now()));
            // A thread that stopped polling during a long request polls
            // again for the client's next one (only once nothing else is in flight).
            if idle {
                l.wake.notify_one();
            }
        });
    }
}

/// A layer counting the requests in flight on the thread that serves them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layer;

impl<S> tower_layer::Layer<S> for Layer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Counted<S>(S);

impl<S, R> tower_service::Service<R> for Counted<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let in_flight = InFlight::start();
        Tracked {
            inner: self.0.call(request),
            _in_flight: in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future; it stops counting when it is dropped (its response
    /// head is ready, or the client went away).
    pub(crate) struct Tracked<F> {
        #[pin]
        inner: F,
        _in_flight: InFlight,
    }
}

impl<F: std::future::Future> std::future::Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(500);
    const RECENT: Option<Duration> = Some(Duration::from_micros(10));

    #[test]
    fn polls_only_for_the_one_request_in_flight_or_right_after_it() {
        // The process's one request is this thread's.
        assert!(should_poll(1, 1, RECENT, WINDOW));
        // Nothing in flight, this thread just answered: its client's next request is near.
        assert!(should_poll(0, 0, RECENT, WINDOW));
        // The one request is another thread's: polling here would not serve it.
        assert!(!should_poll(1, 0, RECENT, WINDOW));
        // Two in flight: the process is busy, its threads seldom sleep.
        assert!(!should_poll(2, 1, RECENT, WINDOW));
        assert!(!should_poll(2, 2, RECENT, WINDOW));
        // Past the window (a slow provider, an idle client) it sleeps.
        assert!(!should_poll(1, 1, Some(WINDOW), WINDOW));
        assert!(!should_poll(0, 0, Some(WINDOW * 4), WINDOW));
        // A thread that never served a request.
        assert!(!should_poll(0, 0, None, WINDOW));
    }

    fn holder() -> usize {
        SPINNER.load(Ordering::Relaxed)
    }

    /// Lets the thread's other tasks run until `done` holds (at most 10 s,
    /// far more than any of these needs: a bound against hanging, not a timing).
    async fn run_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "still waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts a current-thread runtime with a poller on a thread of its own,
    /// as an HTTP thread has, and runs `body` on it.
    fn on_http_thread(
        window: Duration,
        body: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let poller = tokio::spawn(poll_while_idle(BusyPoll { window }));
                run_until("the poller to start", || LOCAL.with(|l| l.polling.get())).await;
                body.await;
                poller.abort();
            });
        })
    }

    /// One test, as the token and the count are the process's: no other
    /// unit test in this crate may start requests or pollers.
    #[test]
    fn a_thread_polls_for_its_lone_request_and_sleeps_past_the_window_or_when_busy() {
        let window = Duration::from_millis(300);
        let (second_may_start, second_may_start_rx) = std::sync::mpsc::channel::<()>();
        let (second_started_tx, second_started) = std::sync::mpsc::channel::<()>();
        let (second_may_end, second_may_end_rx) = std::sync::mpsc::channel::<()>();
        let first = on_http_thread(window, async move {
            assert_eq!(holder(), NOBODY, "nothing served yet, nobody polls");
            let request = InFlight::start();
            run_until("the thread to poll for its request", || holder() != NOBODY).await;
            let mine = holder();
            // Past the window with the request still open (a slow provider) it sleeps.
            run_until("the token back after the window", || holder() == NOBODY).await;
            drop(request);
            // Its client's next request is near: it polls again, then stops.
            run_until("polling after the answer", || holder() == mine).await;
            run_until("the token back after lingering", || holder() == NOBODY).await;
            // A request here, and one on another thread: two in flight, nobody polls.
            let request = InFlight::start();
            run_until("polling for the new request", || holder() == mine).await;
            second_may_start.send(()).unwrap();
            second_started.recv().unwrap();
            run_until("no polling with two in flight", || holder() == NOBODY).await;
            drop(request);
            second_may_end.send(()).unwrap();
        });
        let second = on_http_thread(window, async move {
            tokio::task::spawn_blocking(move || second_may_start_rx.recv().unwrap())
                .await
                .unwrap();
            let request = InFlight::start();
            second_started_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || second_may_end_rx.recv().unwrap())
                .await
                .unwrap();
            drop(request);
        });
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(IN_FLIGHT.load(Ordering::Relaxed), 0);
    }
}
