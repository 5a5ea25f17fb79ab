//! One worker's HTTP/1 server: accept on the worker's listening socket, serve each connection
//! with hyper (keep-alive, upgrades) on the worker's own runtime, and on stop close idle
//! connections, let open requests and streams finish, and wait for them.
//!
//! It must never look at requests (that is `dispatch`) or decide how long a drain may last
//! (that is `app`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

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
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&gateway),
                    stop.clone(),
                    open.clone(),
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

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<Infallible>,
) {
    // Small request/response exchanges: never let Nagle hold a reply back.
    let _ = stream.set_nodelay(true);
    let client = Arc::new((
        Arc::clone(&gateway),
        ClientConnection {
            peer: Peer::new(peer.ip(), &gateway.state.trusted_proxies),
            response_timer: ResponseTimer::default(),
        },
    ));
    let service = service_fn(move |request| {
        let client = Arc::clone(&client);
        async move {
            let (gateway, connection) = &*client;
            Ok::<_, Infallible>(gateway.handle(connection, request).await)
        }
    });
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut stop_signal = std::pin::pin!(stopped(stop.clone()));
    let (mut first_poll, mut draining) = (true, false);
    let result = std::future::poll_fn(|cx| {
        // The signal's future registers this task's waker on the first poll; after that one
        // atomic load tells whether it can have fired, instead of polling it on every wake-up
        // of a busy connection.
        let may_have_fired = std::mem::take(&mut first_poll) || stop.has_changed().unwrap_or(true);
        if !draining && may_have_fired && stop_signal.as_mut().poll(cx).is_ready() {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await;
    if let Err(err) = result {
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
}

/// Resolves once `stop` is true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
