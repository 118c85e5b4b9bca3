//! A TCP proxy of the tests' own that can go silent without closing
//! anything, as a network partition or a hung middlebox does: the sockets
//! stay open and carry nothing.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Forwards connections made to [`addr`](Self::addr) to an upstream server
/// until told to [go silent](Self::go_silent). Dropping it closes every
/// connection.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use keysmith_tests::proxy::SilentProxy;
///
/// let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let upstream = echo.local_addr().unwrap();
/// tokio::spawn(async move {
///     while let Ok((mut socket, _)) = echo.accept().await {
///         tokio::spawn(async move {
///             let (mut read, mut write) = socket.split();
///             tokio::io::copy(&mut read, &mut write).await.ok();
///         });
///     }
/// });
/// let proxy = SilentProxy::start(upstream).await;
/// let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
/// client.write_all(b"ping").await.unwrap();
/// let mut answer = [0; 4];
/// client.read_exact(&mut answer).await.unwrap();
/// assert_eq!(&answer, b"ping");
///
/// proxy.go_silent();
/// client.write_all(b"ping").await.unwrap(); // the socket is still open...
/// let read = tokio::time::timeout(std::time::Duration::from_millis(100), client.read(&mut answer)).await;
/// assert!(read.is_err(), "...and carries nothing");
/// # });
/// ```
#[derive(Debug)]
pub struct SilentProxy {
    addr: SocketAddr,
    /// (silent, epoch): a connection forwards while it is of the current
    /// epoch and the proxy is not silent.
    link: watch::Sender<(bool, u64)>,
    accepting: JoinHandle<()>,
}

impl SilentProxy {
    /// Starts forwarding a free port on 127.0.0.1 to `upstream`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port on 127.0.0.1");
        let addr = listener.local_addr().expect("the proxy's address");
        let link = watch::channel((false, 0)).0;
        let accepting = tokio::spawn(accept(listener, upstream, link.clone()));
        Self { addr, link, accepting }
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, both ways, on every open connection and every new
    /// one, closing nothing.
    pub fn go_silent(&self) {
        self.link.send_modify(|(silent, _)| *silent = true);
    }

    /// Forwards new connections again. The connections open before stay
    /// silent (their path is gone) until their clients give up on them.
    pub fn recover(&self) {
        self.link.send_modify(|(silent, epoch)| {
            *silent = false;
            *epoch += 1;
        });
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        // The accepting task owns every connection's task: all end with it.
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, link: watch::Sender<(bool, u64)>) {
    let mut connections = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        connections.spawn(forward(client, upstream, link.subscribe()));
    }
}

/// Forwards between `client` and a new connection to `upstream` until
/// either end closes, or the proxy goes silent: then both sockets are kept
/// open, and nothing is read or written, for as long as the proxy lives.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<(bool, u64)>) {
    let (silent, epoch) = *link.borrow_and_update();
    if silent {
        return hold(client).await;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let alive = move |&(silent, current): &(bool, u64)| !silent && current == epoch;
    // Biased, the silence first: woken by both a change of state and bytes
    // to forward, the task stops forwarding before it reads them, so
    // nothing written after `go_silent` returned gets through.
    tokio::select! {
        biased;
        () = async { drop(link.wait_for(|state| !alive(state)).await) } => hold((client, server)).await,
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}

/// Keeps `sockets` open, forwarding nothing, until the task is aborted.
async fn hold<T>(sockets: T) {
    std::future::pending::<()>().await;
    drop(sockets);
}
