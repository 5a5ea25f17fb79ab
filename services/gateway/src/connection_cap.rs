//! The per-address connection cap: how many connections one client address (IPv6: one /64)
//! may hold at once. Trusted proxies are exempt: every client of nginx arrives on nginx's
//! connections, and nginx bounds its own clients.
//!
//! It must never read from or write to a connection; `server` closes the ones refused here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::rate_limit::network_of;

/// Open connections per client network, shared by every worker.
pub struct ConnectionCap {
    per_ip: Option<u32>,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One admitted connection; dropping it gives the slot back.
pub struct ConnectionSlot {
    network: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl ConnectionCap {
    pub fn new(per_ip: Option<u32>) -> Self {
        ConnectionCap {
            per_ip,
            open: Arc::default(),
        }
    }

    /// `Err(())` when `address` already holds its cap; `Ok(None)` when it is not counted.
    #[allow(clippy::result_unit_err)]
    pub fn admit(&self, address: IpAddr, trusted: bool) -> Result<Option<ConnectionSlot>, ()> {
        let Some(cap) = self.per_ip.filter(|_| !trusted) else {
            return Ok(None);
        };
        let network = network_of(address);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = open.entry(network).or_insert(0);
        if *count >= cap {
            return Err(());
        }
        *count += 1;
        Ok(Some(ConnectionSlot {
            network,
            open: Arc::clone(&self.open),
        }))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_cap_proxies_are_exempt() {
        let cap = ConnectionCap::new(Some(2));
        let a: IpAddr = [192, 0, 2, 1].into();
        let first = cap.admit(a, false).expect("first");
        let _second = cap.admit(a, false).expect("second");
        assert!(cap.admit(a, false).is_err());
        assert!(cap.admit([192, 0, 2, 2].into(), false).is_ok());
        assert!(cap.admit(a, true).expect("a proxy").is_none());
        drop(first);
        assert!(cap.admit(a, false).is_ok());
        let v6 = |text: &str| text.parse::<IpAddr>().expect("ip");
        let _x = cap.admit(v6("2001:db8::1"), false).expect("x");
        let _y = cap.admit(v6("2001:db8::2"), false).expect("y");
        assert!(cap.admit(v6("2001:db8::3"), false).is_err(), "one /64");
    }
}
