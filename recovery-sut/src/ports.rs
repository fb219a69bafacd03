//! Host TCP ports for forwarding and the gdbstub, so several VMs can run
//! side by side.

use std::net::{Ipv4Addr, TcpListener};

/// A port the user asked for is taken.
#[derive(Debug, thiserror::Error)]
#[error("host port {port} ({purpose}) is already in use: stop whatever listens there (`ss -ltnp 'sport = :{port}'`) or leave the option out so kfi picks a free port")]
pub struct PortInUse {
    /// The port.
    pub port: u16,
    /// What it was for.
    pub purpose: &'static str,
}

/// A port on 127.0.0.1 that was free a moment ago. QEMU binds it later, so
/// a race is possible; the VM start retries with new ports when QEMU says
/// the bind failed.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Checks that a requested port can be bound on 127.0.0.1.
pub fn check_free(port: u16, purpose: &'static str) -> Result<(), PortInUse> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map(drop).map_err(|_| PortInUse { port, purpose })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupied_port_is_reported_by_number() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_free(port, "HTTP forward").unwrap_err().to_string();
        assert!(err.contains(&port.to_string()) && err.contains("already in use"), "{err}");
        drop(held);
        check_free(port, "HTTP forward").unwrap();
        assert_ne!(free_port().unwrap(), 0);
    }
}
