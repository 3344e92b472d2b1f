//! Serving client connections (SPEC "Connections"): a request head must
//! arrive within 10 s, its body within 30 s, an idle keep-alive connection
//! closes after 60 s, and at most `--max-connections` are open at once (past
//! it, new ones wait in the kernel's backlog until one closes). So no number
//! of slow or idle clients keeps others from being served, and half-open
//! connections cannot exhaust the process's file descriptors.
//!
//! `axum::serve` can be told none of this, so connections are served here
//! with hyper's HTTP/1 builder. hyper's own `header_read_timeout` is not
//! used: it re-arms as soon as a keep-alive connection goes idle, which
//! would close idle connections after 10 s instead of 60. Instead each
//! connection keeps an [`Activity`] record, updated by its socket (first
//! bytes of a head, stalled writes), its requests (head parsed, body
//! received, answer sent), and one timer per connection is set to the
//! deadline that record implies. When it fires the connection is dropped,
//! which closes the socket.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// How long clients may take, and how many may be connected at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From a connection's start, or from the first byte of a later
    /// request, until its head is whole.
    pub head: Duration,
    /// From a head until the end of its body; also the longest a client
    /// may leave its answer unread while the socket's buffer is full.
    pub body: Duration,
    /// Between the end of an answer and the first byte of the next request.
    pub idle: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets every
/// open connection finish its request in flight (idle ones close at once)
/// and returns when all are closed.
pub async fn serve_connections(
    listener: TcpListener,
    router: impl Controller,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        // The permit is taken before accepting, so that past the cap new
        // clients wait in the kernel's backlog instead of being refused.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    drop(permit);
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, a response whose headers and body leave in
        // two writes waits for the client's delayed ACK (about 40 ms on
        // Linux) before the body goes out: Nagle's algorithm holds the
        // second small write until the first is acknowledged.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on a connection");
        }
        let router = router.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, stopping).await;
            tracing::trace!(%peer, "connection closed");
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// A failed `accept`: one client's trouble is skipped at once; anything else
/// (out of file descriptors) waits a second rather than spinning, leaving
/// new clients in the backlog meanwhile.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "could not accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What each connection serves: the controller (`server::router`), one
/// clone per request.
pub trait Controller:
    Service<Request, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Controller for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Why a connection's task ended.
enum Ended {
    Served(hyper::Result<()>),
    TimedOut,
}

async fn serve_connection(
    stream: TcpStream,
    router: impl Controller,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(limits));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        write_stalled: false,
    });
    let on_request = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let body_expected = !hyper::body::Body::is_end_stream(request.body());
        let in_flight = InFlight::start(on_request.clone(), body_expected);
        let activity = body_expected.then(|| on_request.clone());
        let request = request.map(|body| Body::new(Arriving { body, activity }));
        let router = router.clone();
        async move {
            let response: Response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Answer {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut stop = pin!(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    let mut stopped = false;
    let mut timer = pin!(tokio::time::sleep_until(
        activity.deadline().unwrap_or_else(Instant::now)
    ));
    let ended = poll_fn(|cx| {
        if !stopped && stop.as_mut().poll(cx).is_ready() {
            stopped = true;
            // Idle: closes now; in flight: after its answer.
            connection.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ended::Served(result));
        }
        // Everything that moves the deadline happens while the connection
        // is polled, so it is read afresh after each poll.
        // None: a request is being answered, and nothing is awaited from
        // the client (the request timeout bounds the answer).
        if let Some(deadline) = activity.deadline() {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::TimedOut);
            }
        }
        Poll::Pending
    })
    .await;
    match ended {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(error)) => tracing::debug!(%error, "connection ended with an error"),
        Ended::TimedOut => tracing::debug!("connection closed: a client too slow or idle too long"),
    }
}

/// What a connection is doing, as far as its deadline is concerned.
struct Activity {
    limits: Limits,
    state: Mutex<State>,
}

struct State {
    /// Requests whose head arrived and whose answer is not yet sent (one
    /// at a time in HTTP/1, but counted so that nothing assumes it).
    in_flight: usize,
    /// When the body of the request in flight must have arrived, while
    /// it has not.
    body_due: Option<Instant>,
    /// When the connection last had no request in flight.
    idle_since: Instant,
    /// Whether a request was served: the first head is due `head` after
    /// the connection opened, later ones may wait `idle` for their first
    /// byte.
    served: bool,
    /// First byte of a head that is not yet whole.
    head_started: Option<Instant>,
    /// Since when a write has been waiting for the client to read.
    write_stalled: Option<Instant>,
}

impl Activity {
    fn new(limits: Limits) -> Activity {
        Activity {
            limits,
            state: Mutex::new(State {
                in_flight: 0,
                body_due: None,
                idle_since: Instant::now(),
                served: false,
                head_started: None,
                write_stalled: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state holds plain values that are always consistent, so a
        // panic elsewhere while it was locked leaves nothing to distrust.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the connection is to be closed if nothing changes, or None
    /// while a request is answered and nothing is awaited from the client.
    fn deadline(&self) -> Option<Instant> {
        let state = self.state();
        let limits = &self.limits;
        let waiting_on_client = if state.in_flight > 0 {
            state.body_due
        } else if let Some(started) = state.head_started {
            Some(started + limits.head)
        } else if state.served {
            Some(state.idle_since + limits.idle)
        } else {
            Some(state.idle_since + limits.head)
        };
        let reading = state.write_stalled.map(|since| since + limits.body);
        match (waiting_on_client, reading) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes arrived: while idle, they start a head, which must now be
    /// whole within `head`.
    fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
        }
    }

    fn body_received(&self) {
        self.state().body_due = None;
    }

    fn write_stalled(&self, stalled: bool) {
        self.state().write_stalled = stalled.then(Instant::now);
    }
}

/// A request in flight, from its head until its answer is sent (or
/// abandoned): held by the handler's future, then by the answer's body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>, body_expected: bool) -> InFlight {
        {
            let mut state = activity.state();
            state.in_flight += 1;
            state.served = true;
            state.head_started = None;
            state.body_due = body_expected.then(|| Instant::now() + activity.limits.body);
        }
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.body_due = None;
            state.idle_since = Instant::now();
        }
    }
}

/// A request body: tells the connection when it has all arrived (or the
/// handler no longer wants it).
struct Arriving {
    body: Incoming,
    /// Some until the body has arrived.
    activity: Option<Arc<Activity>>,
}

impl Arriving {
    fn received(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.body_received();
        }
    }
}

impl hyper::body::Body for Arriving {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.received();
    }
}

/// An answer's body, holding its request in flight until hyper has taken
/// all of it.
struct Answer {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, reporting to [`Activity`] the first bytes of a head and
/// writes that wait on a client that does not read.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    write_stalled: bool,
}

impl Watched {
    /// Notes whether a write is waiting, on a change only.
    fn wrote<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        let stalled = polled.is_pending();
        if stalled != self.write_stalled {
            self.write_stalled = stalled;
            self.activity.write_stalled(stalled);
        }
        polled
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.wrote(polled)
    }
}

/// Raises the soft limit of open files toward the hard one, so that
/// `max_connections` sockets (plus the database's files and the rest) fit;
/// says so when the hard limit is too low.
pub fn raise_open_files_limit(max_connections: usize) {
    const HEADROOM: libc::rlim_t = 1024;
    let wanted = max_connections as libc::rlim_t + HEADROOM;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "could not raise the open files limit");
        return;
    }
    if raised.rlim_cur < wanted {
        tracing::warn!(
            open_files = raised.rlim_cur,
            max_connections,
            "the open files limit is below --max-connections; raise the hard limit (ulimit -Hn)"
        );
    }
}
