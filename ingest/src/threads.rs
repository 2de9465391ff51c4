//! Thread-per-core HTTP serving, for the ingest API and the proxy.
//!
//! On tokio's multi-threaded runtime one request hops between workers: the
//! handler, the NATS connection's task that writes the append and the task
//! that reads its ack can each land on a different core, and every hop that
//! wakes a parked worker costs a futex and, on a VM, an inter-processor
//! interrupt. Measured with `tollgate-bench ingest` on 2 cores, that was a
//! third of the reserve latency at 1 client. Here each thread runs its own
//! current-thread runtime with its own NATS connection (its own [`Gate`]
//! handle, HTTP client…), built by the caller's `setup` on that thread; one
//! acceptor task hands accepted connections to the threads in turn, so a
//! connection's requests are served start to end on one thread. Threads share
//! the account state (one [`Gate`]), so per-account order does not depend on
//! which thread a request lands on.
//!
//! [`Gate`]: ledger::Gate

pub use crate::busy_poll::BusyPoll;
use anyhow::Context as _;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a thread waits, after its connections drained, for the work its
/// requests left running (the proxy's settlements) before it stops.
const DRAIN_TASKS_FOR: Duration = Duration::from_secs(10);

/// How long requests still running at shutdown may go on before they are
/// cut short ([`Worker::cut_off`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a write to a client may stay blocked (the client reads nothing,
/// its window full) before the connection is closed, as nginx's
/// `send_timeout`. Only a blocked write counts: a stream waiting for the
/// provider's next token does not. A client that stopped reading would
/// otherwise keep its connection, its buffers and, on the proxy, its call
/// to the provider for as long as it likes; closing it ends the call there
/// and settles what was consumed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The time limits [`serve_with`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// See [`SHUTDOWN_GRACE`].
    pub grace: Duration,
    /// See [`SEND_TIMEOUT`].
    pub send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            grace: SHUTDOWN_GRACE,
            send: SEND_TIMEOUT,
        }
    }
}

/// Each HTTP thread's runtime always has a timer due within this long
/// ([`anchor_timers`]). Shorter than the timeout every request sets (a
/// publish's acknowledgement, 2 s); rarer, shorter ones (reading a
/// snapshot when an account is loaded, 500 ms; retry back-offs) still wake
/// the driver, as every timer did before. The cost: an idle thread wakes
/// once a second.
pub const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_ANCHOR`] on this runtime, for as long
/// as it runs. tokio wakes a runtime's driver (a write to its eventfd, read
/// back by a spurious wake-up) whenever a timer is set that is due before
/// every timer the driver last saw; on a thread with no timer pending, that
/// was every publish's acknowledgement timeout: a system call on the way of
/// every append at low load (`perf record -e syscalls:sys_enter_write -g`
/// on the proxy's threads at 1 client: `mio::Waker::wake` under
/// `PublishAckFuture`, after both the hold and the commit). Requests'
/// timeouts are all due later than the anchor, so none of them wakes it.
pub async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// What `setup` gets on each thread.
pub struct Worker {
    /// 0-based, for thread names and logs.
    pub index: usize,
    /// Background work started by requests on this thread (settlements):
    /// the thread waits for it before its runtime stops.
    pub tracker: TaskTracker,
    /// Cancelled a grace period after shutdown began: a request still
    /// running then (a long stream) must end and settle what it consumed
    /// now, while the thread can still record it, rather than be dropped
    /// with the runtime.
    pub cut_off: CancellationToken,
}

/// The number of threads when `TOLLGATE_HTTP_THREADS` is unset: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Serves `listeners` on `threads` threads until `shutdown`, each polling
/// its sockets per `busy_poll` while the process is nearly idle (see
/// [`crate::busy_poll`]). `setup` runs on
/// each thread, inside its runtime, and returns one router per listener (in
/// the same order). Returns once every thread has set up (the first error
/// fails the whole start and stops the others); the returned future ends when
/// every thread has drained and stopped.
pub async fn serve<F, Fut>(
    listeners: Vec<TcpListener>,
    threads: usize,
    busy_poll: BusyPoll,
    setup: F,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static>
where
    F: Fn(Worker) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Vec<Router>>> + 'static,
{
    serve_with(
        listeners,
        threads,
        busy_poll,
        setup,
        shutdown,
        Timeouts::default(),
    )
    .await
}

/// [`serve`] with other [`Timeouts`] (tests use short ones).
pub async fn serve_with<F, Fut>(
    listeners: Vec<TcpListener>,
    threads: usize,
    busy_poll: BusyPoll,
    setup: F,
    shutdown: CancellationToken,
    timeouts: Timeouts,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static>
where
    F: Fn(Worker) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Vec<Router>>> + 'static,
{
    let threads = threads.max(1);
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let setup = Arc::new(setup);
    // A failed start must not leave the other threads serving: `stop` is
    // cancelled on every early return until the guard is disarmed.
    let stop = shutdown.child_token();
    let failed_start = stop.clone().drop_guard();
    // senders[listener][thread]
    let mut senders: Vec<Vec<mpsc::UnboundedSender<std::net::TcpStream>>> =
        addrs.iter().map(|_| Vec::new()).collect();
    let mut ready = Vec::new();
    let mut done = Vec::new();
    for index in 0..threads {
        let mut inboxes = Vec::new();
        for (per_listener, addr) in senders.iter_mut().zip(&addrs) {
            let (tx, rx) = mpsc::unbounded_channel();
            per_listener.push(tx);
            inboxes.push(Handed {
                rx,
                addr: *addr,
                send_timeout: timeouts.send,
            });
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (setup, stop) = (setup.clone(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building an HTTP thread's runtime")?;
        std::thread::Builder::new()
            .name(format!("tg-http-{index}"))
            .spawn(move || {
                runtime.block_on(run_thread(
                    index,
                    inboxes,
                    setup,
                    ready_tx,
                    stop,
                    timeouts.grace,
                    busy_poll,
                ));
                drop(done_tx);
            })
            .context("starting an HTTP thread")?;
        ready.push(ready_rx);
        done.push(done_rx);
    }
    for ready_rx in ready {
        let started = match ready_rx.await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("an HTTP thread stopped while setting up")),
        };
        started?;
    }
    failed_start.disarm();
    for (listener, per_listener) in listeners.into_iter().zip(senders) {
        tokio::spawn(accept(listener, per_listener, stop.clone()));
    }
    Ok(async move {
        for done_rx in done {
            // Err means the thread ended (its sender dropped): what we wait for.
            let _ = done_rx.await;
        }
    })
}

async fn run_thread<F, Fut>(
    index: usize,
    inboxes: Vec<Handed>,
    setup: Arc<F>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
    grace: Duration,
    busy_poll: BusyPoll,
) where
    F: Fn(Worker) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<Router>>>,
{
    let tracker = TaskTracker::new();
    let cut_off = CancellationToken::new();
    // Ends with the runtime.
    tokio::spawn(anchor_timers());
    tokio::spawn({
        let (stop, cut_off) = (stop.clone(), cut_off.clone());
        async move {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
            cut_off.cancel();
        }
    });
    let routers = match setup(Worker {
        index,
        tracker: tracker.clone(),
        cut_off,
    })
    .await
    {
        Ok(routers) if routers.len() == inboxes.len() => routers,
        Ok(routers) => {
            let why = format!(
                "setup made {} routers for {} listeners",
                routers.len(),
                inboxes.len()
            );
            let _ = ready.send(Err(anyhow::anyhow!(why)));
            return;
        }
        Err(e) => {
            let _ = ready.send(Err(e.context(format!("setting up HTTP thread {index}"))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    tokio::spawn(crate::busy_poll::poll_while_idle(busy_poll));
    let servers: Vec<_> = routers
        .into_iter()
        .zip(inboxes)
        .map(|(router, inbox)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let router = if busy_poll.is_off() {
                    router
                } else {
                    router.layer(crate::busy_poll::Layer)
                };
                let served = axum::serve(inbox, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(thread = index, error = %e, "HTTP server stopped");
                }
            })
        })
        .collect();
    for server in servers {
        let _ = server.await;
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TASKS_FOR, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            thread = index,
            tasks = tracker.len(),
            "background work still running after the connections drained; stopping anyway"
        );
    }
}

/// Accepts connections on `listener` and hands them to the threads in turn.
async fn accept(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    stop: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Small writes (SSE events, short JSON answers) go out at once: without
        // TCP_NODELAY, Nagle's algorithm and delayed ACKs hold them for ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "could not hand over a connection");
                continue;
            }
        };
        // A thread whose server stopped drops its inbox: try the next one.
        let mut tcp = Some(tcp);
        for _ in 0..threads.len() {
            let Some(stream) = tcp.take() else { break };
            let thread = &threads[next % threads.len()];
            next = next.wrapping_add(1);
            if let Err(mpsc::error::SendError(back)) = thread.send(stream) {
                tcp = Some(back);
            }
        }
        if tcp.is_some() {
            tracing::error!("no HTTP thread is serving; closing the connection");
        }
    }
}

/// A thread's share of one listener's connections.
struct Handed {
    rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    addr: SocketAddr,
    send_timeout: Duration,
}

impl axum::serve::Listener for Handed {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let Some(tcp) = self.rx.recv().await else {
                // The acceptor stopped (shutdown): wait for the graceful end.
                return std::future::pending().await;
            };
            // Registers the socket with this thread's runtime.
            match TcpStream::from_std(tcp) {
                Ok(tcp) => {
                    let peer = tcp.peer_addr().unwrap_or(self.addr);
                    let conn = Conn {
                        tcp,
                        send_timeout: self.send_timeout,
                        blocked: None,
                        armed: false,
                    };
                    return (conn, peer);
                }
                Err(e) => tracing::debug!(error = %e, "could not take over a connection"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A client's connection, closed when a write to it stays blocked past
/// [`SEND_TIMEOUT`]: the error ends the connection, and with it the request
/// it was answering.
pub struct Conn {
    tcp: TcpStream,
    send_timeout: Duration,
    /// Due at the timeout, counted from when writes blocked; made the first
    /// time a write is pending (a connection that writes freely sets no
    /// timer) and reset, not remade, each time they block again.
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether writes are blocked now (`blocked` counts).
    armed: bool,
}

impl Conn {
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let timeout = self.send_timeout;
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.armed {
            self.armed = true;
            blocked
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
        }
        if blocked.as_mut().poll(cx).is_ready() {
            self.armed = false;
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", timeout.as_secs_f64()),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.written(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A TCP stream has nothing of its own to flush.
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// As axum's own accept loop: per-connection errors are skipped; anything
/// else (out of file descriptors) is logged and retried after a pause.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write-like system calls this thread made so far (`syscw` in
    /// `/proc/thread-self/io`; the eventfd write that wakes a driver is one).
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io")
            .expect("this test reads /proc/thread-self/io (Linux, CONFIG_TASK_IO_ACCOUNTING)");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a syscw line in /proc/thread-self/io")
    }

    /// What a request does with its acknowledgement timeout, 100 times on
    /// an otherwise idle thread: set a timer due in 2 s, then drop it.
    fn writes_for_100_timeouts(anchored: bool) -> u64 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if anchored {
                tokio::spawn(anchor_timers());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let before = writes_by_this_thread();
            for _ in 0..100 {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = std::future::ready(()) => {}
                }
                // Lets the driver run, as waiting for the ack would.
                tokio::task::yield_now().await;
            }
            writes_by_this_thread() - before
        })
    }

    #[test]
    fn a_requests_timeout_does_not_wake_its_threads_driver() {
        let bare = writes_for_100_timeouts(false);
        let anchored = writes_for_100_timeouts(true);
        assert!(
            bare >= 90,
            "without an anchor each timer wakes the driver: {bare}"
        );
        assert!(anchored <= 2, "{anchored} wake-ups with the anchor");
    }
}
