//! `Server` over real sockets: the peer address reaches handlers, a client
//! that does not finish its request head is disconnected, and the shutdown
//! waits for requests in flight only until its deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use keysmith_admin::{Server, Stopped};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// `router` served by `server` on a free port, and the trigger of its
/// shutdown signal.
async fn start(server: Server, router: Router) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<Stopped>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, router, async {
        let _ = stopped.await;
    }));
    (addr, stop, serving)
}

/// Reads from `stream` until the server closes it; what it sent.
async fn read_until_closed(mut stream: TcpStream) -> String {
    let mut received = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(error)) => panic!("reading failed: {error}"),
        Err(_) => panic!("the server did not close the connection"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn handlers_see_the_peer_address_in_connect_info() {
    let router =
        Router::new().route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }));
    let (addr, stop, serving) = start(Server::new(), router).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    stream.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let response = read_until_closed(stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&format!("\r\n\r\n{client}")), "{response}");
    stop.send(()).unwrap();
    assert_eq!(serving.await.unwrap().dropped_connections, 0);
}

#[tokio::test]
async fn a_half_sent_head_is_disconnected_after_the_header_timeout() {
    let server = Server::new().with_header_timeout(Duration::from_secs(1));
    let (addr, stop, serving) = start(server, Router::new().route("/", get(|| async { "ok" }))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let response = read_until_closed(stream).await;
    let waited = sent.elapsed();
    assert_eq!(response, "", "no answer, the connection is closed");
    assert!(waited >= Duration::from_millis(900), "closed before the header timeout: {waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    stop.send(()).unwrap();
    assert_eq!(serving.await.unwrap().dropped_connections, 0);
}

#[tokio::test]
async fn a_request_still_running_at_the_shutdown_deadline_is_dropped() {
    let started = Arc::new(Notify::new());
    let handler_started = Arc::clone(&started);
    let router = Router::new().route(
        "/forever",
        get(move || async move {
            handler_started.notify_one();
            std::future::pending::<&str>().await
        }),
    );
    let deadline = Duration::from_millis(500);
    let server = Server::new().with_header_timeout(Duration::from_secs(60)).with_shutdown_timeout(deadline);
    let (addr, stop, serving) = start(server, router).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    started.notified().await;

    let signalled = Instant::now();
    stop.send(()).unwrap();
    let stopped = serving.await.unwrap();
    let took = signalled.elapsed();
    assert_eq!(stopped.dropped_connections, 1);
    assert!(took >= deadline, "the request in flight was not given its time: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(read_until_closed(stream).await, "", "dropped without an answer");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_delay_the_shutdown() {
    let server =
        Server::new().with_header_timeout(Duration::from_secs(60)).with_shutdown_timeout(Duration::from_secs(60));
    let (addr, stop, serving) = start(server, Router::new().route("/", get(|| async { "ok" }))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\nok") {
        assert!(stream.read_buf(&mut response).await.unwrap() > 0, "closed before the answer");
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&response));

    let signalled = Instant::now();
    stop.send(()).unwrap();
    assert_eq!(serving.await.unwrap().dropped_connections, 0);
    assert!(signalled.elapsed() < Duration::from_secs(20), "{:?}", signalled.elapsed());
    assert_eq!(read_until_closed(stream).await, "", "the idle connection is closed");
}
