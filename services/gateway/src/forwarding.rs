//! The header rules of a forwarding proxy, as pure functions over `HeaderMap`s: hop-by-hop
//! headers stripped (RFC 9110 §7.6.1, plus the names `Connection` lists), client-supplied
//! internal headers (`x-cairn-*`) dropped, `X-Forwarded-*` and `X-Real-IP` set, the real client
//! IP found through trusted proxies, and `X-Accel-Buffering: no` on event streams.
//!
//! It must never do I/O or look at bodies.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, Entry, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1, plus the
/// pre-standard `keep-alive` and `proxy-connection`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in `HOP_BY_HOP`: one match on the name instead of nine comparisons.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Headers the gateway sets for upstreams; a client sending one is dropped, never trusted.
pub const INTERNAL_PREFIX: &str = "x-cairn-";

/// The authenticated caller of a `/v1` request, as inference sees it.
pub const USER_HEADER: &str = "x-cairn-user";

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Who sent a request: the TCP peer, whether the peer is a proxy we trust (nginx), and its
/// address as a header value. Worked out once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: IpAddr,
    pub trusted: bool,
    pub header: HeaderValue,
}

impl Peer {
    pub fn new(address: IpAddr, trusted_proxies: &[IpNet]) -> Self {
        let address = canonical(address);
        Peer {
            address,
            trusted: trusted_proxies.iter().any(|net| net.contains(&address)),
            header: ip_header(address),
        }
    }
}

fn ip_header(address: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&address.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's IP: the peer, unless the peer is a trusted proxy. Then `X-Forwarded-For` is
/// read from the right, where each entry was appended by the hop to its right: an entry is
/// believed only while the hop that wrote it is trusted, so the answer is the right-most entry
/// that is not a trusted proxy. Entries left of it (which the client may have written itself)
/// are never read. An entry that is not an address stops the walk at the hop that passed it on.
pub fn client_ip(peer: &Peer, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    if !peer.trusted {
        return peer.address;
    }
    let mut client = peer.address;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = canonical(address);
            if !trusted_proxies.iter().any(|net| net.contains(&client)) {
                return client;
            }
        }
    }
    client
}

/// The `Upgrade` protocol when the request asks to switch protocols (WebSocket).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers, the ones `Connection` names, and those `also` picks. One pass
/// over the names finds which are present, so the common message costs no lookup per rule; the
/// tokens every keep-alive exchange carries (`keep-alive`, `close`) need no name of their own.
fn strip_hop_by_hop(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    // Names `Connection` lists and names `also` picks: both rare, so usually no allocation.
    let mut listed = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let tokens = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
        for token in tokens.map(str::trim) {
            let common = token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close");
            if !common && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    let mut present = 0u16;
    for name in headers.keys() {
        match hop_by_hop_index(name.as_str()) {
            Some(index) => present |= 1 << index,
            None if also(name.as_str()) => listed.push(name.clone()),
            None => {}
        }
    }
    for name in listed {
        headers.remove(name);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

fn restore_upgrade(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// What the gateway knows about a request when it rewrites its headers for the upstream.
#[derive(Debug)]
pub struct Forwarding<'a> {
    pub peer: &'a Peer,
    pub client: IpAddr,
    pub request_id: HeaderValue,
    /// `Some(protocol)` for a WebSocket (or other) upgrade, which keeps its `Upgrade` headers.
    pub upgrade: Option<HeaderValue>,
    /// The chosen instance's `host:port`: the upstream request's `Host`.
    pub upstream_host: HeaderValue,
}

/// Rewrites a client request's headers into the upstream request's headers.
pub fn upstream_request_headers(headers: &mut HeaderMap, forwarding: &Forwarding<'_>) {
    strip_hop_by_hop(headers, |name| name.starts_with(INTERNAL_PREFIX));
    // Room for the headers set below, so the map grows once at most.
    headers.reserve(6);
    let peer = forwarding.peer;
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(chain) if peer.trusted => {
            HeaderValue::from_str(&format!("{chain}, {}", peer.address)).ok()
        }
        _ => Some(peer.header.clone()),
    };
    if !peer.trusted {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    if let Some(forwarded_for) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, forwarded_for);
    }
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static("http"));
    // The client's Host named the gateway; the upstream gets its own.
    let client_host = headers.insert(header::HOST, forwarding.upstream_host.clone());
    if let Some(host) = client_host
        && let Entry::Vacant(slot) = headers.entry(X_FORWARDED_HOST)
    {
        slot.insert(host);
    }
    let real_ip = if forwarding.client == peer.address {
        peer.header.clone()
    } else {
        ip_header(forwarding.client)
    };
    headers.insert(X_REAL_IP, real_ip);
    headers.insert(REQUEST_ID, forwarding.request_id.clone());
    restore_upgrade(headers, forwarding.upgrade.clone());
}

/// Rewrites an upstream response's headers for the client.
pub fn client_response_headers(
    headers: &mut HeaderMap,
    request_id: &HeaderValue,
    upgrade: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers, |_| false);
    restore_upgrade(headers, upgrade);
    headers.insert(REQUEST_ID, request_id.clone());
    let is_event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if is_event_stream {
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_index_matches_the_table() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(index), "{name}");
        }
        assert_eq!(hop_by_hop_index("content-length"), None);
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 10.0.0.7")]);
        let nginx = Peer::new("10.0.0.5".parse().expect("ip"), &trusted);
        assert_eq!(client_ip(&nginx, &h, &trusted).to_string(), "1.2.3.4");
        let stranger = Peer::new("5.6.7.8".parse().expect("ip"), &trusted);
        assert_eq!(client_ip(&stranger, &h, &trusted).to_string(), "5.6.7.8");
        let spoofed = headers(&[("x-forwarded-for", "9.9.9.9, 1.2.3.4")]);
        assert_eq!(client_ip(&nginx, &spoofed, &trusted).to_string(), "1.2.3.4");
    }

    #[test]
    fn forged_entries_left_of_the_client_are_never_read() {
        let trusted = nets(&["10.0.0.5/32"]);
        let nginx = Peer::new("10.0.0.5".parse().expect("ip"), &trusted);
        // A client on a private network that nginx saw as 192.168.1.50, forging the rest.
        let h = headers(&[("x-forwarded-for", "203.0.113.1, 10.0.0.5, 192.168.1.50")]);
        assert_eq!(client_ip(&nginx, &h, &trusted).to_string(), "192.168.1.50");
        // Two header lines are one list; garbage stops at the last trusted hop.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "junk, 10.0.0.5"),
        ]);
        assert_eq!(client_ip(&nginx, &h, &trusted).to_string(), "10.0.0.5");
        // Every entry a trusted hop: the left-most of them.
        let h = headers(&[("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(client_ip(&nginx, &h, &trusted).to_string(), "10.0.0.5");
    }

    #[test]
    fn upstream_headers_follow_the_rules() {
        let mut h = headers(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-cairn-user", "admin"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("accept", "text/event-stream"),
        ]);
        let peer = Peer::new("5.6.7.8".parse().expect("ip"), &[]);
        let forwarding = Forwarding {
            client: peer.address,
            peer: &peer,
            request_id: HeaderValue::from_static("abc"),
            upgrade: None,
            upstream_host: HeaderValue::from_static("api:8000"),
        };
        upstream_request_headers(&mut h, &forwarding);
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "x-cairn-user",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept: {h:?}");
        }
        assert_eq!(h["host"], "api:8000");
        assert_eq!(h["x-forwarded-for"], "5.6.7.8");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-real-ip"], "5.6.7.8");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["accept"], "text/event-stream");
    }

    #[test]
    fn upgrade_keeps_its_headers_and_streams_are_unbuffered() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = requested_upgrade(&h);
        assert_eq!(upgrade.as_ref().expect("upgrade"), "websocket");
        client_response_headers(&mut h, &HeaderValue::from_static("id"), upgrade);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let mut h = headers(&[("content-type", "text/event-stream; charset=utf-8")]);
        client_response_headers(&mut h, &HeaderValue::from_static("id"), None);
        assert_eq!(h["x-accel-buffering"], "no");
        assert_eq!(h["x-request-id"], "id");
    }
}
