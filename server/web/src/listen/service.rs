//! What each request goes through between hyper and the router: its connection made known to
//! the code answering it, its body given a deadline, and its time in progress counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;
use tokio::time::{Instant, Sleep};

use super::registry::{Close, Conn, InFlight};

tokio::task_local! {
    /// The connection of the request being answered. Set around each request's future (not
    /// its task: under HTTP/2 requests run on tasks of their own), so that the key checks in
    /// `auth` can mark the connection authenticated without every handler passing it along.
    static CONNECTION: Arc<Conn>;
}

/// Marks the connection of the request being answered as authenticated; does nothing outside
/// a request served by [`super::serve`] (a test's router, the long-poll session's task).
pub fn mark_authenticated() {
    let _ = CONNECTION.try_with(|conn| conn.authenticated());
}

/// The router, per connection.
#[derive(Clone)]
pub struct PerConnection {
    pub router: TowerToHyperService<axum::Router>,
    pub conn: Arc<Conn>,
    pub peer: SocketAddr,
    /// The client certificate the TLS handshake verified, if any.
    pub peer_cert: Option<super::PeerCert>,
    pub body_timeout: Duration,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Counted>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response<Counted>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.conn.request_started();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // HTTP/2 (which TLS clients such as curl and browsers negotiate) carries the host in
        // the `:authority` pseudo-header, not `Host`: it is copied over, so that the routes
        // that build this server's URL from the request (`/deploy.sh`, the install line,
        // download links) see it whichever protocol carried the request.
        if !request.headers().contains_key(hyper::header::HOST)
            && let Some(authority) = request.uri().authority()
            && let Ok(value) = hyper::header::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(hyper::header::HOST, value);
        }
        if let Some(cert) = &self.peer_cert {
            request.extensions_mut().insert(cert.clone());
        }
        let request = if request.body().is_end_stream() {
            request.map(Body::new)
        } else {
            let deadline = Instant::now() + self.body_timeout;
            let conn = self.conn.clone();
            let timeout = self.body_timeout;
            request.map(|body| {
                Body::new(Deadline {
                    body,
                    deadline,
                    timeout,
                    sleep: None,
                    conn,
                })
            })
        };
        let answer = CONNECTION.scope(self.conn.clone(), self.router.call(request));
        Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| Counted {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request counted as in progress until hyper has sent it and
/// dropped it (a server-sent event stream is in progress for as long as it is open).
pub struct Counted {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes before its end, and asks for its
/// connection to be closed after the response (what is left of the body would be read as the
/// next request). The timer is made at the first read that has to wait, so a body that is
/// already whole in the buffer costs none.
struct Deadline {
    body: Incoming,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    conn: Arc<Conn>,
}

/// The error a body too slow to arrive ends with; its text reaches the client in the 400.
#[derive(Debug)]
struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s of its headers (--body-timeout)",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl HttpBody for Deadline {
    type Data = <Incoming as HttpBody>::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.conn.request_close(Close::AfterResponse);
        tracing::debug!("closing a connection whose request body came too slowly");
        metrics::counter!(super::CONNECTIONS_TIMED_OUT, "phase" => "body").increment(1);
        Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
