//! The `http` task's address guard: unless `IDEM_HTTP_ALLOW_PRIVATE` is set, a task may not
//! reach loopback, private, link-local, shared (CGNAT), multicast, reserved or cloud-metadata
//! addresses, so a submitted task cannot probe the network the worker sits in.
//!
//! Invariant: every address the guarded client connects to has passed [`is_forbidden`]. The check
//! for names runs inside the client's DNS resolver, so the addresses checked are exactly the
//! addresses connected to — DNS rebinding has no window between check and connect. IP literals skip
//! DNS, so [`check_url`] checks them before the request is built.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Names refused before any lookup: they denote metadata services whatever they resolve to.
const FORBIDDEN_NAMES: &[&str] = &["metadata.google.internal"];

/// Why the guard refused a destination. Found again in a `reqwest::Error`'s source chain when the
/// refusal came from the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RefusedAddress {
    pub(super) host: String,
    /// The offending address; `None` when the name itself is refused.
    pub(super) ip: Option<IpAddr>,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) if ip.to_string() == self.host => write!(f, "{ip}")?,
            Some(ip) => write!(f, "{} resolves to {ip}", self.host)?,
            None => write!(f, "{}", self.host)?,
        }
        f.write_str(
            " is a loopback, private, link-local or metadata address; \
             set IDEM_HTTP_ALLOW_PRIVATE=true to let the http task reach it",
        )
    }
}

impl Error for RefusedAddress {}

/// True for every address the `http` task may not reach while the guard is on.
pub(super) fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", 0.0.0.0/8, including the unspecified address
        || ip.is_loopback() // 127/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16, where cloud metadata services live
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT), 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || ip.is_documentation() // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
        || ip.is_multicast() // 224/4
        || a >= 240 // reserved 240/4 and the broadcast address
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        is_forbidden_v4(Ipv4Addr::new(a, b, c, d))
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4); // ::ffff:a.b.c.d
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast() // ff00::/8
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation, 2001:db8::/32
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local-use NAT64, 64:ff9b:1::/48
        // IPv4-compatible (deprecated) ::a.b.c.d and NAT64 64:ff9b::/96 reach the IPv4 address they embed.
        || (s[..6] == [0; 6] && embedded_v4(s[6], s[7]))
        || (s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] && embedded_v4(s[6], s[7]))
        // 6to4, 2002:a.b.c.d::/48, is routed towards the IPv4 address it embeds.
        || (s[0] == 0x2002 && embedded_v4(s[1], s[2]))
}

fn is_forbidden_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    FORBIDDEN_NAMES.contains(&name.as_str())
}

/// Refuses a URL whose host is a forbidden IP literal or name. Names that pass are checked again,
/// on their resolved addresses, by [`GuardedResolver`].
pub(super) fn check_url(url: &Url) -> Result<(), RefusedAddress> {
    let host = url.host_str().unwrap_or_default();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>();
    let refused = match literal {
        Ok(ip) => is_forbidden(ip).then_some(Some(ip)),
        Err(_) => is_forbidden_name(host).then_some(None),
    };
    match refused {
        Some(ip) => Err(RefusedAddress {
            host: host.to_owned(),
            ip,
        }),
        None => Ok(()),
    }
}

/// The guarded client's DNS resolver: resolves with the system resolver, then refuses the whole
/// name if ANY of its addresses is forbidden — trying only the allowed ones would still let a name
/// that mixes public and private addresses steer connections inward.
#[derive(Debug, Default)]
pub(super) struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = checked_lookup(&host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

async fn checked_lookup(host: &str) -> Result<Vec<SocketAddr>, Box<dyn Error + Send + Sync>> {
    if is_forbidden_name(host) {
        return Err(Box::new(RefusedAddress {
            host: host.to_owned(),
            ip: None,
        }));
    }
    // Port 0: the client puts the URL's port (or the scheme's default) on each address.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(Box::new(RefusedAddress {
            host: host.to_owned(),
            ip: Some(bad.ip()),
        }));
    }
    Ok(addrs)
}

/// The guard's refusal, if that is what stopped a request.
pub(super) fn refusal_in<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a RefusedAddress> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_forbidden_refuses_internal_addresses_and_allows_public_ones() {
        let table: &[(&str, bool)] = &[
            // IPv4 that must be refused
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true), // cloud metadata
            ("169.254.0.1", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("192.0.0.1", true),
            ("192.0.2.1", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            // IPv4 that is public, including the neighbours of the refused ranges
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("172.15.255.255", false),
            ("172.32.0.1", false),
            ("100.63.255.255", false),
            ("100.128.0.1", false),
            ("192.169.0.1", false),
            ("169.255.0.1", false),
            ("198.17.255.255", false),
            ("198.20.0.1", false),
            ("11.0.0.1", false),
            ("223.255.255.255", false),
            // IPv6 that must be refused
            ("::", true),
            ("::1", true),
            ("fc00::1", true),
            ("fd12:3456:789a::1", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("2001:db8::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.1.2.3", true),
            ("::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true), // NAT64 of 169.254.169.254
            ("64:ff9b:1::1", true),
            ("2002:7f00:1::", true),   // 6to4 of 127.0.0.1
            ("2002:c0a8:101::", true), // 6to4 of 192.168.1.1
            // IPv6 that is public
            ("2606:4700:4700::1111", false),
            ("2001:4860:4860::8888", false),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::808:808", false), // NAT64 of 8.8.8.8
            ("2002:808:808::", false),
            ("fbff::1", false),
            ("fe00::1", false),
        ];
        for &(ip, forbidden) in table {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(is_forbidden(parsed), forbidden, "{ip}");
        }
    }

    #[test]
    fn check_url_refuses_forbidden_literals_and_metadata_names() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://2130706433/", // 127.0.0.1 written as one number
            "http://0x7f.1/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
        ] {
            let url = Url::parse(url).unwrap();
            assert!(check_url(&url).is_err(), "{url}");
        }
        for url in [
            "https://example.com/",
            "http://8.8.8.8/",
            "http://[2606:4700::1]/",
        ] {
            let url = Url::parse(url).unwrap();
            assert_eq!(check_url(&url), Ok(()), "{url}");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_a_name_with_any_forbidden_address() {
        let err = checked_lookup("localhost").await.unwrap_err();
        let refused = refusal_in(err.as_ref()).expect("refused by the guard");
        assert_eq!(refused.host, "localhost");
        assert!(refused.ip.is_some_and(|ip| ip.is_loopback()), "{refused:?}");
    }

    #[test]
    fn refusals_name_the_setting_that_allows_them() {
        let refused = RefusedAddress {
            host: "internal.example".into(),
            ip: Some("10.0.0.5".parse().unwrap()),
        };
        let message = refused.to_string();
        assert!(
            message.starts_with("internal.example resolves to 10.0.0.5"),
            "{message}"
        );
        assert!(message.contains("IDEM_HTTP_ALLOW_PRIVATE"), "{message}");
    }
}
