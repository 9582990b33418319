//! The Unix socket: newline-delimited JSON requests in, JSON events out (see the README).
//!
//! Bounded everywhere: a cap on connections (one over the cap is told `busy` and closed), a
//! maximum line length (a longer line is discarded as it streams in and answered `too_long`),
//! a cap on requests in flight per connection, and peer credentials checked against the
//! configured allow-lists.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use edgellm_protocol::{self as protocol, ErrorCode, Event, Rejection, Request};

use crate::config::SocketConfig;
use crate::service::{Service, Ticket};

const TRANSPORT: &str = "socket";

/// Why the prompt socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("the socket passed by systemd")]
    Inherited(#[source] std::io::Error),
    #[error("cannot create {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("{path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("cannot remove the stale {path}")]
    RemoveStale { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {path}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Mode(#[from] crate::config::ConfigError),
    #[error("cannot set the mode of {path}")]
    SetMode { path: PathBuf, source: std::io::Error },
}

/// The listening socket: inherited from systemd (`LISTEN_FDS`, socket activation) when there
/// is one, else bound at the configured path with the configured mode.
pub fn bind(config: &SocketConfig) -> Result<UnixListener, SocketError> {
    if let Some(fd) = inherited_listener() {
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).map_err(SocketError::Inherited)?;
        tracing::info!("using the socket passed by systemd");
        return UnixListener::from_std(std_listener).map_err(SocketError::Inherited);
    }
    bind_path(&config.path, config.mode_bits()?)
}

/// Binds a Unix socket at `path` with `mode`, creating its directory and replacing a stale
/// file left by a crash (never one a live process still answers on). Shared with the HTTP API.
pub(crate) fn bind_path(path: &std::path::Path, mode: u32) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| SocketError::CreateDir { path: parent.into(), source })?;
    }
    if path.exists() {
        // A live daemon answers on it; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse { path: path.into() });
        }
        std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale { path: path.into(), source })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind { path: path.into(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| SocketError::SetMode { path: path.into(), source })?;
    Ok(listener)
}

/// The prompt socket passed by systemd (socket activation): the first one not named
/// [`HTTP_FD_NAME`] (the HTTP API's, `FileDescriptorName=http`).
fn inherited_listener() -> Option<OwnedFd> {
    listen_fd(|name| name != HTTP_FD_NAME)
}

/// `FileDescriptorName=` of the HTTP API's socket unit.
pub(crate) const HTTP_FD_NAME: &str = "http";

/// The first socket systemd passed to this process (`LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`) whose name `wanted` accepts; an unnamed one counts as the prompt socket.
pub(crate) fn listen_fd(wanted: impl Fn(&str) -> bool) -> Option<OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: usize = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let index = (0..fds).find(|_| wanted(names.next().unwrap_or("")))?;
    Some(take_listen_fd(index))
}

#[allow(unsafe_code)]
fn take_listen_fd(index: usize) -> OwnedFd {
    const SD_LISTEN_FDS_START: i32 = 3;
    // SAFETY: LISTEN_PID names this process and `index` is below LISTEN_FDS, so by systemd's
    // protocol fd 3 + index is an open socket handed to it; each transport takes its own
    // (the prompt socket one not named "http", the HTTP API the one named so), once, at
    // start-up, and owns it from here on.
    unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START + index as i32) }
}

/// Accepts connections until shutdown, then waits for every connection to finish its answers
/// (answering new ones `shutting_down` meanwhile).
pub async fn serve(listener: UnixListener, service: Service) {
    // The connection limit is fixed for the listener's life (a reload that changes it takes
    // effect at restart); the allow-lists and per-connection settings are read per connection.
    let max_connections = service.config().socket.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = service.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(reason) = check_peer(&stream, &service.config().socket) {
            tracing::warn!(%reason, "socket client refused");
            refuse(&service, stream, ErrorCode::Forbidden, "this user may not use the socket").await;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max = max_connections, "socket client refused: too many connections");
            refuse(&service, stream, ErrorCode::Busy, "too many connections").await;
            continue;
        };
        let service = service.clone();
        tracker.spawn(async move {
            handle_connection(stream, service).await;
            drop(permit);
        });
    }
    // Draining: the connections already open finish their answers; new ones are told so at
    // once and closed, until the worker is done and the socket goes away.
    tracker.close();
    let drained = tracker.wait();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            _ = &mut drained => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    refuse(&service, stream, ErrorCode::ShuttingDown, "the daemon is shutting down").await;
                }
            }
        }
    }
    let path = service.config().socket.path.clone();
    if !path.as_os_str().is_empty() && inherited_listener_env_absent() {
        let _ = std::fs::remove_file(&path);
    }
}

fn inherited_listener_env_absent() -> bool {
    std::env::var_os("LISTEN_FDS").is_none()
}

/// Why a socket client is not served (logged, never sent).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerRefusal {
    #[error("cannot read peer credentials")]
    Credentials(#[source] nix::Error),
    #[error("uid {uid} gid {gid} not in the allow-lists")]
    NotAllowed { uid: u32, gid: u32 },
}

/// The configured allow-lists applied to a peer (SO_PEERCRED); the HTTP socket uses them too.
pub(crate) fn check_peer(stream: &UnixStream, config: &SocketConfig) -> Result<(), PeerRefusal> {
    if config.allowed_uids.is_empty() && config.allowed_gids.is_empty() {
        return Ok(());
    }
    let cred = nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(PeerRefusal::Credentials)?;
    let (uid, gid) = (cred.uid(), cred.gid());
    if config.allowed_uids.contains(&uid) || config.allowed_gids.contains(&gid) {
        Ok(())
    } else {
        Err(PeerRefusal::NotAllowed { uid, gid })
    }
}

/// Answers a connection that is not served, counting the refusal. What the client already
/// sent is read and dropped first (briefly, boundedly): closing a Unix socket with unread
/// input resets the peer, which would then lose the answer.
async fn refuse(service: &Service, mut stream: UnixStream, code: ErrorCode, message: &str) {
    use tokio::io::AsyncReadExt;
    let rejection = Rejection::new(code, message);
    service.metrics.record_error(code);
    let line = protocol::error_json(None, &rejection) + "\n";
    let budget = Duration::from_secs(1);
    let _ = tokio::time::timeout(budget, stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
}

/// How one read of a line ended.
#[derive(Debug, PartialEq)]
enum LineRead {
    Line,
    /// More than the limit arrived without a newline; the rest is not read.
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), holding at most `max` bytes: past it the
/// read stops at once, so a client cannot make the daemon grow or wait for a newline.
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() { LineRead::Eof } else { LineRead::Line });
        }
        let (chunk, used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if buf.len() + chunk.len() > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        reader.consume(used);
        if complete {
            return Ok(LineRead::Line);
        }
    }
}

/// Why reading from a connection stopped early.
#[derive(Debug, PartialEq)]
enum Stalled {
    /// Nothing in flight and no line begun for `idle_timeout_ms`.
    Idle,
    /// A line begun and not finished within `line_timeout_ms`.
    MidLine,
}

/// The next line, within the connection's time limits: `idle` until a line begins, then
/// `line` for the whole of it.
async fn read_line_within<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    idle: Duration,
    line: Duration,
) -> Result<std::io::Result<LineRead>, Stalled> {
    let begun = async {
        reader.fill_buf().await?;
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = tokio::time::timeout(idle, begun).await.map_err(|_| Stalled::Idle)? {
        return Ok(Err(e));
    }
    tokio::time::timeout(line, read_bounded_line(reader, buf, max)).await.map_err(|_| Stalled::MidLine)
}

/// Whether the peer has closed the connection both ways (not only shut down its writing:
/// a client that half-closed still reads its answers).
fn peer_hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

async fn handle_connection(stream: UnixStream, service: Service) {
    let settings = service.config();
    let config = &settings.socket;
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(16 * 1024, read_half);
    // Outgoing lines from every request of this connection; the writer task owns the socket.
    let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            if write_half.write_all(line.as_bytes()).await.is_err() || write_half.write_all(b"\n").await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });
    let origin = service.origin(config.max_inflight_per_connection);
    let requests = TaskTracker::new();
    let (idle, line_time) =
        (Duration::from_millis(config.idle_timeout_ms), Duration::from_millis(config.line_timeout_ms));
    let mut line = Vec::with_capacity(1024);
    loop {
        // While draining, requests are still read (and answered `shutting_down`) until the
        // worker has finished the admitted ones.
        let read = tokio::select! {
            _ = service.worker_done.cancelled() => break,
            read = read_line_within(&mut reader, &mut line, config.max_line_bytes, idle, line_time) => read,
        };
        let read = match read {
            Ok(read) => read,
            // A client waiting for its answers is not idle.
            Err(Stalled::Idle) if !requests.is_empty() => continue,
            Err(stalled) => {
                let r = match stalled {
                    Stalled::Idle => Rejection::new(ErrorCode::Timeout, "idle for too long, closing"),
                    Stalled::MidLine => Rejection::new(ErrorCode::Timeout, "the request line did not end in time"),
                };
                service.refused(&r, TRANSPORT);
                let _ = out_tx.send(protocol::error_json(None, &r)).await;
                break;
            }
        };
        match read {
            Ok(LineRead::Eof) | Err(_) => break,
            Ok(LineRead::TooLong) => {
                let r = Rejection::new(
                    ErrorCode::TooLong,
                    format!("request line longer than {} bytes, closing", config.max_line_bytes),
                );
                service.refused(&r, TRANSPORT);
                let _ = out_tx.send(protocol::error_json(None, &r)).await;
                break;
            }
            Ok(LineRead::Line) => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match service.parse(&line, TRANSPORT) {
            Err(refused) => {
                let _ = out_tx.send(protocol::error_json(refused.id.as_deref(), &refused.rejection)).await;
            }
            Ok(Request::Health { id }) => {
                let _ = out_tx.send(crate::health::health_event(id.as_deref(), &service.health())).await;
            }
            Ok(Request::Cancel { id }) => {
                if !origin.cancel(&id) {
                    let r = Rejection::new(ErrorCode::BadRequest, "no request in flight with that id");
                    let _ = out_tx.send(protocol::error_json(Some(&id), &r)).await;
                }
            }
            Ok(Request::Generate(request)) => {
                let id = request.id.clone();
                match origin.submit(request) {
                    Err(rejection) => {
                        let _ = out_tx.send(Event::Error(rejection).to_json(&id)).await;
                    }
                    Ok(ticket) => {
                        requests.spawn(forward(ticket, out_tx.clone()));
                    }
                }
            }
        }
    }
    // No more requests from this client. What it has in flight is still answered: it may have
    // only shut down its writing (`socat`, `nc -N`). Only a peer that is really gone (both
    // ways closed) has them cancelled; at shutdown they may finish (drain).
    requests.close();
    let read_half = reader.into_inner();
    loop {
        tokio::select! {
            _ = requests.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if peer_hung_up(read_half.as_ref()) && !service.stop_accepting.is_cancelled() {
                    origin.cancel_all();
                    requests.wait().await;
                    break;
                }
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

/// Sends a request's events to the connection's writer until the final one; a writer that
/// has gone cancels the request.
async fn forward(mut ticket: Ticket, out: mpsc::Sender<String>) {
    while let Some(event) = ticket.events.recv().await {
        let last = event.is_final();
        if out.send(event.to_json(&ticket.id)).await.is_err() {
            ticket.cancel.cancel();
            break;
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_line_reader_stops_at_the_limit() {
        let data = b"short\nthis line is far too long\nok\n".to_vec();
        let mut reader = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(), LineRead::Line);
        assert_eq!(buf, b"short");
        assert_eq!(read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(), LineRead::TooLong);
        assert!(buf.len() <= 10, "no more than the limit was held");
        let mut tail = BufReader::with_capacity(4, &b"last-no-newline"[..]);
        assert_eq!(read_bounded_line(&mut tail, &mut buf, 20).await.unwrap(), LineRead::Line);
        assert_eq!(buf, b"last-no-newline");
        assert_eq!(read_bounded_line(&mut tail, &mut buf, 20).await.unwrap(), LineRead::Eof);
    }
}
