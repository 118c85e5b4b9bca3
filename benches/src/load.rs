//! What the load generators (`soak`, `flood`) share: a keep-alive HTTP/1.1
//! client small enough to count every answer, the resident memory and CPU
//! time of processes, and the commit a run measured.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident memory of process `pid` in KiB (0 if it is gone): what the
/// allocator holds, not only live bytes.
#[must_use]
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks of 1/100 s) spent so far by every
/// process whose name (`/proc/<pid>/comm`) is `name` — all of PostgreSQL's
/// backends, say — or, for `None`, by this process. Processes that ended
/// are not counted, so read it while the processes of interest live.
#[must_use]
pub fn cpu_ticks(name: Option<&str>) -> u64 {
    let ticks = |pid: &str| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the name, which may hold spaces, in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let Some(name) = name else {
        return ticks("self").unwrap_or(0);
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|entry| std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name))
        .filter_map(|entry| ticks(&entry.file_name().to_string_lossy()))
        .sum()
}

/// The short hash of the commit checked out here (empty outside git).
#[must_use]
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One keep-alive HTTP/1.1 request with `Authorization: Bearer {key}` on
/// `conn` (opened to `addr` when `None`, once more when the server had
/// closed it): the status and body, or status 0 with no answer within 10 s.
pub async fn send(
    conn: &mut Option<TcpStream>, addr: SocketAddr, method: &str, path: &str, key: &str, body: Option<&str>,
) -> (u16, String) {
    for attempt in 0..2 {
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => *conn = Some(stream),
                _ => return (0, String::new()),
            }
        }
        let stream = conn.as_mut().unwrap();
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            stream.write_all(request.as_bytes()).await?;
            read_response(stream).await
        })
        .await;
        match answer {
            Ok(Ok(answer)) => return answer,
            // A kept-alive connection the server closed: once more on a new one.
            Ok(Err(_)) if attempt == 0 => *conn = None,
            _ => {
                *conn = None;
                return (0, String::new());
            }
        }
    }
    (0, String::new())
}

async fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok((status, String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned()))
}
