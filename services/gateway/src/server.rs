//! One worker's HTTP/1 server: accept on the worker's listening socket, admit the connection
//! under the per-address cap (`connection_cap`), serve it with hyper (keep-alive, upgrades) on
//! the worker's own runtime, close it when its head is too slow or it idles too long
//! (`connection_timeouts`), and on stop close idle connections, let open requests and streams
//! finish, and wait for them.
//!
//! It must never look at requests (that is `dispatch`) or decide how long a drain may last
//! (that is `app`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::connection_cap::ConnectionSlot;
use crate::connection_timeouts::{ClockedBody, ClockedIo, ConnectionClock, Expired};
use crate::dispatch::{ClientConnection, Gateway};
use crate::forwarding::Peer;
use crate::response_timer::ResponseTimer;

/// Serves until `stop` turns true, then waits until every connection has finished.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, stop: watch::Receiver<bool>) {
    // Each connection task holds a sender; `recv` answers `None` once all are gone.
    let (open, mut all_closed) = mpsc::channel::<Infallible>(1);
    let mut stopping = std::pin::pin!(stopped(stop.clone()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopping => break,
        };
        match accepted {
            Ok((stream, address)) => {
                let peer = Peer::new(address.ip(), &gateway.state.trusted_proxies);
                let Ok(slot) = gateway
                    .state
                    .connection_cap
                    .admit(peer.address, peer.trusted)
                else {
                    // Closed unanswered: one address holds its share of connections already.
                    metrics::counter!("gateway_connections_refused_total").increment(1);
                    tracing::debug!(%address, "connection refused: per-address cap reached");
                    continue;
                };
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&gateway),
                    stop.clone(),
                    (open.clone(), slot),
                ));
            }
            Err(err) if is_per_connection(&err) => {}
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// How serving a connection ended.
enum Ended {
    Served(Result<(), hyper::Error>),
    TimedOut(Expired),
}

async fn serve_connection(
    stream: TcpStream,
    peer: Peer,
    gateway: Arc<Gateway>,
    stop: watch::Receiver<bool>,
    // Held until the connection ends: the drain's count and the per-address slot.
    _held: (mpsc::Sender<Infallible>, Option<ConnectionSlot>),
) {
    // Small request/response exchanges: never let Nagle hold a reply back.
    let _ = stream.set_nodelay(true);
    let address = peer.address;
    let clock = Arc::new(ConnectionClock::new(&gateway.state.connection_limits));
    let client = Arc::new((
        Arc::clone(&gateway),
        ClientConnection {
            peer,
            response_timer: ResponseTimer::default(),
        },
        Arc::clone(&clock),
    ));
    let service = service_fn(move |request| {
        let client = Arc::clone(&client);
        async move {
            let (gateway, connection, clock) = &*client;
            clock.request_started();
            let response = gateway.handle(connection, request).await;
            Ok::<_, Infallible>(response.map(|body| ClockedBody::new(body, Arc::clone(clock))))
        }
    });
    let io = ClockedIo::new(stream, Arc::clone(&clock));
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut stop_signal = std::pin::pin!(stopped(stop.clone()));
    let (mut first_poll, mut draining) = (true, false);
    let mut armed = clock.deadline().map(|(deadline, _)| deadline);
    let mut timer = Box::pin(tokio::time::sleep_until(
        armed.unwrap_or_else(tokio::time::Instant::now),
    ));
    let ended = std::future::poll_fn(|cx| {
        // The signal's future registers this task's waker on the first poll; after that one
        // atomic load tells whether it can have fired, instead of polling it on every wake-up
        // of a busy connection.
        let may_have_fired = std::mem::take(&mut first_poll) || stop.has_changed().unwrap_or(true);
        if !draining && may_have_fired && stop_signal.as_mut().poll(cx).is_ready() {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ended::Served(result));
        }
        // No deadline while a request is in flight; otherwise the timer follows the phase
        // (moving it later, the common case, is one atomic update).
        if let Some((deadline, which)) = clock.deadline() {
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::TimedOut(which));
            }
        }
        Poll::Pending
    })
    .await;
    match ended {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(err)) => {
            tracing::debug!(error = %err, peer = %address, "connection ended with an error");
        }
        Ended::TimedOut(which) => {
            let timeout = match which {
                Expired::Header => "header",
                Expired::Idle => "idle",
            };
            metrics::counter!("gateway_connections_timed_out_total", "timeout" => timeout)
                .increment(1);
            tracing::debug!(timeout, peer = %address, "closing a connection: its timeout ran out");
        }
    }
}

/// Resolves once `stop` is true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
