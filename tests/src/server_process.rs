//! Servers run as child processes (`keysmith serve`, the demos) and the raw
//! HTTP/1.1 clients their tests need: whole requests, an idle keep-alive
//! connection, and slow clients that never finish their request head or
//! body.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use keysmith_tests::server_process::{ServerProcess, half_head};
//!
//! let mut server = ServerProcess::start(Command::new("target/debug/example-axum"));
//! let _slow = half_head(server.addr());
//! server.terminate();
//! let (status, after) = server.wait_for_exit(Duration::from_secs(30));
//! assert!(status.success(), "stopped after {after:?}");
//! ```

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server may take to print its address: a debug build
/// migrating a fresh database on a busy machine.
const STARTUP: Duration = Duration::from_secs(120);

/// How long a client waits for any one answer.
const ANSWER: Duration = Duration::from_secs(30);

/// How often waits poll.
const POLL: Duration = Duration::from_millis(10);

/// A server binary running as a child process, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Spawns `command` (stdout and stderr piped) and waits for the first
    /// line on stdout that names `http://ADDR`: where it listens.
    ///
    /// # Panics
    /// When the command cannot start, or exits or stays silent instead.
    #[must_use]
    #[track_caller]
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines, announced) = mpsc::channel();
        let readers = vec![
            collect(child.stdout.take().expect("piped"), Arc::clone(&stdout), Some(lines)),
            collect(child.stderr.take().expect("piped"), Arc::clone(&stderr), None),
        ];
        let mut server = Self { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), stdout, stderr, readers };
        server.addr = server.announced_addr(&announced);
        server
    }

    fn announced_addr(&mut self, lines: &Receiver<String>) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let Some((_, rest)) = line.split_once("http://") else { continue };
                    let addr = rest.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or_default();
                    return addr.parse().unwrap_or_else(|_| panic!("no address in {line:?}"));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("no address printed within {STARTUP:?}: {}{}", self.stdout(), self.stderr());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    self.join_readers();
                    panic!("exited with {status} before listening: {}{}", self.stdout(), self.stderr());
                }
            }
        }
    }

    /// Where the server listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything the server printed on stdout so far.
    #[must_use]
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Everything the server printed on stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The value of the first `NAME=value` line on stdout, once printed.
    ///
    /// # Panics
    /// When no such line is printed within the startup time.
    #[must_use]
    #[track_caller]
    pub fn printed(&self, name: &str) -> String {
        let prefix = format!("{name}=");
        let started = Instant::now();
        loop {
            let found = self.stdout().lines().find_map(|line| line.strip_prefix(&prefix).map(str::to_owned));
            if let Some(value) = found {
                return value;
            }
            assert!(started.elapsed() < STARTUP, "no {name}=… line: {}", self.stdout());
            std::thread::sleep(POLL);
        }
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL (a crash, an OOM kill) and waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    /// Sends SIGTERM, as a supervisor stopping the service does.
    ///
    /// # Panics
    /// When `kill` cannot be run or fails.
    #[track_caller]
    pub fn terminate(&self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `within`, and for the last of
    /// its output: its exit status and how long the wait took.
    ///
    /// # Panics
    /// When it is still running after `within` (it is killed first).
    #[track_caller]
    pub fn wait_for_exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running {within:?} after the wait began: {}{}", self.stdout(), self.stderr());
            }
            std::thread::sleep(POLL);
        };
        let took = started.elapsed();
        self.join_readers();
        (status, took)
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies `pipe` into `into` line by line (and each line to `lines`) until
/// it closes.
fn collect(
    pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>, lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// An answer read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and headers, lowercased.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Sends one request on a new connection (`Connection: close`) and reads
/// the answer.
///
/// # Panics
/// When the server cannot be reached or answers something else than
/// HTTP/1.1 with a `Content-Length`.
#[must_use]
#[track_caller]
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = connect(addr);
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    send(&mut stream, method, path, &headers, body);
    read_response(&mut stream)
}

/// Sends one request (keep-alive, the HTTP/1.1 default) and reads its
/// answer; the connection stays open, idle, for the caller to hold.
///
/// # Panics
/// As [`request`].
#[must_use]
#[track_caller]
pub fn keep_alive_request(addr: SocketAddr, path: &str) -> (TcpStream, Response) {
    let mut stream = connect(addr);
    send(&mut stream, "GET", path, &[], b"");
    let response = read_response(&mut stream);
    assert!(!response.head.contains("connection: close"), "the server closes the connection: {}", response.head);
    (stream, response)
}

/// A slow client: a connection that has sent the first half of a request
/// head and sends nothing more. Returns once the server has read what was
/// sent (on Linux, seen in `/proc/net/tcp`), so that from then on the
/// server holds a request in progress.
///
/// # Panics
/// When the server cannot be reached or does not read within 30 s.
#[must_use]
#[track_caller]
pub fn half_head(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slow").as_bytes()).expect("write");
    wait_until_read(&stream);
    stream
}

/// Another slow client: a connection that has sent a whole request head
/// announcing a 1000-byte body, and 10 bytes of it. Returns once the server
/// has read them: the request is in flight, its handler waiting for the
/// body.
///
/// # Panics
/// As [`half_head`].
#[must_use]
#[track_caller]
pub fn slow_body(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n{\"name\": \"");
    stream.write_all(head.as_bytes()).expect("write");
    wait_until_read(&stream);
    stream
}

/// Waits until the server closes `stream` (end of file or reset), at most
/// `within`: what the server sent, and how long the wait took.
///
/// # Panics
/// When the connection is still open after `within`.
#[must_use]
#[track_caller]
pub fn wait_closed(mut stream: TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).expect("set_read_timeout");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the connection is still open after {:?} ({error})", started.elapsed()),
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
    stream.set_read_timeout(Some(ANSWER)).expect("set_read_timeout");
    stream
}

fn send(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let addr = stream.peer_addr().expect("peer_addr");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("write the request");
}

/// Reads one answer: the head, then `Content-Length` bytes of body.
fn read_response(stream: &mut TcpStream) -> Response {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("read the answer's head");
        assert!(read > 0, "the connection closed in the answer's head: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let head = head.to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
    let status = status.unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    let length = head.lines().find_map(|line| line.strip_prefix("content-length:")).map(str::trim);
    let length: usize = length.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("read the answer's body");
    Response { status, head, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Waits until the server's end of `stream` has nothing left to read: the
/// receive queue of that socket in `/proc/net/tcp` is empty.
#[cfg(target_os = "linux")]
fn wait_until_read(stream: &TcpStream) {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => panic!("IPv4 servers only"),
    };
    // The server's socket: its local address is our peer, its remote ours.
    let (server, client) = (hex(stream.peer_addr().expect("peer_addr")), hex(stream.local_addr().expect("local_addr")));
    let started = Instant::now();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let queued = table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, rx_queue) = fields.get(4)?.split_once(':')?;
            (fields.get(1) == Some(&server.as_str()) && fields.get(2) == Some(&client.as_str()))
                .then(|| u64::from_str_radix(rx_queue, 16).ok())
                .flatten()
        });
        if queued == Some(0) {
            return;
        }
        assert!(started.elapsed() < ANSWER, "the server did not read the request within {ANSWER:?}");
        std::thread::sleep(POLL);
    }
}

/// Elsewhere there is no queue to look at: give the server a moment.
#[cfg(not(target_os = "linux"))]
fn wait_until_read(_stream: &TcpStream) {
    std::thread::sleep(Duration::from_millis(500));
}
