//! systemd's notification protocol (`sd_notify`), for the service (`Type=notify`, `NotifyAccess=all`): the
//! poller says `READY=1` once it has written its first status, and a `STATUS=` line with the overall message
//! each time it saves, so `systemctl status kvvm` shows how the certificates stand. Without `NOTIFY_SOCKET`
//! (the extension, or kvvm run by hand) nothing is sent. A datagram to a Unix socket is all it takes; no crate.
//! Windows has no systemd: nothing there sets `NOTIFY_SOCKET`, and a socket named in it could not be reached
//! (the Windows service reports to its service control manager instead).

#[cfg(unix)]
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets to the socket it listens on; never passed on to post-install commands.
pub(crate) const SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// Longest `STATUS=` text sent (systemctl shows one line).
const STATUS_LIMIT: usize = 200;

/// Tells systemd the service is ready, with `status` as its one-line status. Errors are ignored: a
/// notification that cannot be sent must never stop the worker.
pub(crate) fn ready(status: &str) {
    if let Some(socket) = std::env::var_os(SOCKET_VAR) {
        let _ = send(&socket, &message(status));
    }
}

/// The datagram for [`ready`].
fn message(status: &str) -> String {
    let line: String = status.lines().next().unwrap_or_default().to_string();
    let mut end = line.len().min(STATUS_LIMIT);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("READY=1\nSTATUS={}", &line[..end])
}

#[cfg(windows)]
fn send(_path: &std::ffi::OsStr, _message: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "systemd's notification socket does not exist on Windows",
    ))
}

#[cfg(unix)]
fn send(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // "@name" is a socket in the abstract namespace (systemd uses one for each unit it starts).
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn an_abstract_socket_is_reached_by_its_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("kvvm-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(windows)]
    #[test]
    fn on_windows_nothing_is_sent_and_nothing_fails() {
        let e = send(std::ffi::OsStr::new("@kvvm"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
        ready("1 of 1 certificates installed");
    }

    #[test]
    fn one_line_clipped_at_a_character_boundary() {
        assert_eq!(
            message("2 of 2 installed"),
            "READY=1\nSTATUS=2 of 2 installed"
        );
        assert_eq!(message("first\nsecond"), "READY=1\nSTATUS=first");
        let long = "é".repeat(150);
        let sent = message(&long);
        assert!(sent.len() <= "READY=1\nSTATUS=".len() + STATUS_LIMIT);
        assert!(sent.ends_with('é'));
    }

    #[test]
    #[cfg(unix)]
    fn a_notification_reaches_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(
            path.as_os_str(),
            &message("1 of 1 certificates installed and up to date"),
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"READY=1\nSTATUS=1 of 1 certificates installed and up to date"
        );
    }
}
