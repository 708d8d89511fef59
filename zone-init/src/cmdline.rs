//! The zone's configuration, from the kernel command line (`/proc/cmdline`).
//!
//! The host writes `bulkhead.*` parameters into the zone's kernel command line; everything else on it
//! belongs to the kernel and is skipped. Parsing follows the kernel's own tokenizer (`next_arg` in
//! `lib/cmdline.c`): parameters are separated by whitespace, double quotes group text containing spaces and
//! are removed (`key="a b"` and `"key=a b"` both give `a b`), and the first `=` splits key from value.
//!
//! Known keys:
//! - `bulkhead.zone=ID` (required): 1-64 characters of `[A-Za-z0-9._-]`.
//! - `bulkhead.hostname=NAME` (required): an RFC 1123 host name, lowercase as Kubernetes requires, at most 64
//!   characters (the kernel's `HOST_NAME_MAX`).
//! - `bulkhead.selftest=poweroff` (optional): run the boot self-test and power off (no host channel needed);
//!   `bulkhead.selftest=channel-garbage`: fault injection, garbage on the host channel after the hello.
//! - `bulkhead.channel=PATH` (optional): the xenstore directory (relative to the zone's own, e.g.
//!   `bulkhead/channel`) where bulkheadd serves the zone's host channel; 1-40 characters of `[A-Za-z0-9/_-]`.
//!   Without it the zone runs standalone (self-test, bare `xl create`).
//! - `bulkhead.ip=ADDR/LEN` (optional): the pod network's address for `eth0` (the zone's PV NIC, which the
//!   host gave the pod interface's MAC); `bulkhead.gw=GW` its gateway; `bulkhead.routes=DST/LEN[@GW],...`
//!   its routes (a route without `@GW` goes through `bulkhead.gw`, or on-link without it). IPv4 only.
//!
//! Unknown `bulkhead.*` keys are collected in [`Cmdline::unknown`] for init to report; they are not fatal, so
//! an older zone-init boots with a newer host. A known key given twice is an error.

use std::fmt;

/// Errors in the `bulkhead.*` parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// A required key is absent.
    #[error("missing bulkhead.{key}")]
    Missing {
        /// The key without the `bulkhead.` prefix.
        key: &'static str,
    },
    /// A known key appears more than once.
    #[error("bulkhead.{key} is given more than once")]
    Duplicate {
        /// The key without the `bulkhead.` prefix.
        key: &'static str,
    },
    /// A known key has an unacceptable value.
    #[error("invalid bulkhead.{key}={value:?}: {reason}")]
    Invalid {
        /// The key without the `bulkhead.` prefix.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A double quote is never closed.
    #[error("unbalanced double quote in the kernel command line")]
    UnbalancedQuote,
}

/// The zone's identity as the host named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneId(String);

impl ZoneId {
    /// Validates `s` as a zone id.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty");
        }
        if s.len() > 64 {
            return Err("longer than 64 characters");
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err("only letters, digits, '.', '_' and '-' are allowed");
        }
        Ok(ZoneId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name valid under RFC 1123 (lowercase), at most [`Hostname::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    /// The kernel's `HOST_NAME_MAX`.
    pub const MAX_LEN: usize = 64;

    /// Validates `s` as a host name: dot-separated labels of 1-63 characters from `[a-z0-9-]`, none starting
    /// or ending with `-`, 64 characters in all at most.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty");
        }
        if s.len() > Self::MAX_LEN {
            return Err("longer than 64 characters");
        }
        for label in s.split('.') {
            if label.is_empty() {
                return Err("empty label");
            }
            if label.len() > 63 {
                return Err("label longer than 63 characters");
            }
            if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err("only lowercase letters, digits, '-' and '.' are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err("a label must not start or end with '-'");
            }
        }
        Ok(Hostname(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `bulkhead.channel`: a relative xenstore path, short enough for libxenvchan once the zone's own directory
/// (`/local/domain/<id>/`) is prefixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPath(String);

impl ChannelPath {
    /// The longest accepted path.
    pub const MAX_LEN: usize = 40;

    /// Validates a relative xenstore path.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err("must be 1 to 40 characters");
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return Err("must be a relative path without empty components");
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-')) {
            return Err("may hold only letters, digits, '/', '_' and '-'");
        }
        Ok(ChannelPath(s.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What `bulkhead.selftest` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selftest {
    /// Spawn and reap a child, report it, then power off.
    PowerOff,
    /// Fault injection: say hello on the host channel, then write garbage to it, as a hostile or broken zone
    /// would. The daemon must fail this zone and nothing else.
    ChannelGarbage,
}

/// The zone configuration from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// `bulkhead.zone`.
    pub zone: ZoneId,
    /// `bulkhead.hostname`.
    pub hostname: Hostname,
    /// `bulkhead.selftest`.
    pub selftest: Option<Selftest>,
    /// `bulkhead.channel`.
    pub channel: Option<ChannelPath>,
    /// `bulkhead.ip`, `bulkhead.gw` and `bulkhead.routes`: the pod network's interface.
    pub network: Option<crate::net::InterfaceConfig>,
}

/// The interface the host's NIC appears as (netfront's first device).
pub const POD_INTERFACE: &str = "eth0";

/// Most routes taken (the host sends at most 8).
const MAX_ROUTES: usize = 16;

fn ipv4_net(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr.into(), len))
}

/// The pod network from its three keys; `None` without `bulkhead.ip`.
fn network(
    ip: Option<String>,
    gw: Option<String>,
    routes: Option<String>,
) -> Result<Option<crate::net::InterfaceConfig>, CmdlineError> {
    let Some(ip) = ip else {
        return match (gw, routes) {
            (None, None) => Ok(None),
            (Some(v), _) => Err(CmdlineError::Invalid { key: "gw", value: v, reason: "needs bulkhead.ip" }),
            (None, Some(v)) => Err(CmdlineError::Invalid { key: "routes", value: v, reason: "needs bulkhead.ip" }),
        };
    };
    let address = ipv4_net(&ip).ok_or_else(|| CmdlineError::Invalid {
        key: "ip",
        value: ip.clone(),
        reason: "give an IPv4 address and prefix length, e.g. 10.88.0.5/16",
    })?;
    let gateway = match gw {
        None => None,
        Some(g) => Some(g.parse::<std::net::Ipv4Addr>().map_err(|_| CmdlineError::Invalid {
            key: "gw",
            value: g.clone(),
            reason: "give an IPv4 address",
        })?),
    };
    let mut parsed = Vec::new();
    for r in routes.iter().flat_map(|r| r.split(',')) {
        let bad = || CmdlineError::Invalid {
            key: "routes",
            value: r.to_owned(),
            reason: "give DST/LEN or DST/LEN@GW, IPv4, comma-separated",
        };
        let (dst, via) = match r.split_once('@') {
            Some((d, g)) => (d, Some(g.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?.into())),
            None => (r, None),
        };
        let (dst, len) = ipv4_net(dst).ok_or_else(bad)?;
        parsed.push((dst, len, via));
    }
    if parsed.len() > MAX_ROUTES {
        return Err(CmdlineError::Invalid {
            key: "routes",
            value: format!("{} routes", parsed.len()),
            reason: "at most 16 routes are taken",
        });
    }
    Ok(Some(crate::net::InterfaceConfig {
        name: POD_INTERFACE.into(),
        mac: None,
        address,
        gateway: gateway.map(Into::into),
        routes: parsed,
    }))
}

/// A parsed command line: the configuration and the `bulkhead.*` keys this init does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// The validated configuration.
    pub config: ZoneConfig,
    /// Unknown `bulkhead.*` keys (without their values), in order of appearance.
    pub unknown: Vec<String>,
}

const PREFIX: &str = "bulkhead.";

/// Splits a command line into parameters the way the kernel does: whitespace separates, double quotes
/// group and are removed.
pub fn split_params(line: &str) -> Result<Vec<String>, CmdlineError> {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut in_param = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_param = true;
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if in_param {
                    params.push(std::mem::take(&mut cur));
                    in_param = false;
                }
            }
            c => {
                cur.push(c);
                in_param = true;
            }
        }
    }
    if quoted {
        return Err(CmdlineError::UnbalancedQuote);
    }
    if in_param {
        params.push(cur);
    }
    Ok(params)
}

/// Parses and validates the `bulkhead.*` parameters of a kernel command line.
pub fn parse(line: &str) -> Result<Cmdline, CmdlineError> {
    let mut zone: Option<String> = None;
    let mut hostname: Option<String> = None;
    let mut selftest: Option<String> = None;
    let mut channel: Option<String> = None;
    let (mut ip, mut gw, mut routes): (Option<String>, Option<String>, Option<String>) = (None, None, None);
    let mut unknown = Vec::new();
    for param in split_params(line)? {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        let Some(key) = key.strip_prefix(PREFIX) else { continue };
        let (name, slot): (&'static str, &mut Option<String>) = match key {
            "zone" => ("zone", &mut zone),
            "hostname" => ("hostname", &mut hostname),
            "selftest" => ("selftest", &mut selftest),
            "channel" => ("channel", &mut channel),
            "ip" => ("ip", &mut ip),
            "gw" => ("gw", &mut gw),
            "routes" => ("routes", &mut routes),
            other => {
                unknown.push(format!("{PREFIX}{other}"));
                continue;
            }
        };
        if slot.is_some() {
            return Err(CmdlineError::Duplicate { key: name });
        }
        // A bare key (no '=') counts as an empty value, which every known key refuses.
        *slot = Some(value.unwrap_or_default().to_owned());
    }

    let zone = zone.ok_or(CmdlineError::Missing { key: "zone" })?;
    let zone = ZoneId::parse(&zone).map_err(|reason| CmdlineError::Invalid { key: "zone", value: zone, reason })?;
    let hostname = hostname.ok_or(CmdlineError::Missing { key: "hostname" })?;
    let hostname = Hostname::parse(&hostname).map_err(|reason| CmdlineError::Invalid {
        key: "hostname",
        value: hostname,
        reason,
    })?;
    let selftest = match selftest.as_deref() {
        None => None,
        Some("poweroff") => Some(Selftest::PowerOff),
        Some("channel-garbage") => Some(Selftest::ChannelGarbage),
        Some(other) => {
            return Err(CmdlineError::Invalid {
                key: "selftest",
                value: other.to_owned(),
                reason: "the self-tests are \"poweroff\" and \"channel-garbage\"",
            });
        }
    };
    let channel = match channel {
        None => None,
        Some(path) => Some(ChannelPath::parse(&path).map_err(|reason| CmdlineError::Invalid {
            key: "channel",
            value: path,
            reason,
        })?),
    };
    let network = network(ip, gw, routes)?;
    Ok(Cmdline { config: ZoneConfig { zone, hostname, selftest, channel, network }, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Cmdline {
        match parse(line) {
            Ok(c) => c,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    fn err(line: &str) -> CmdlineError {
        match parse(line) {
            Ok(c) => panic!("{line:?} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_typical_zone_command_line_parses() {
        let c = ok("console=hvc0 quiet bulkhead.zone=t1 bulkhead.hostname=zone-t1 bulkhead.selftest=poweroff\n");
        assert_eq!(c.config.zone.as_str(), "t1");
        assert_eq!(c.config.hostname.as_str(), "zone-t1");
        assert_eq!(c.config.selftest, Some(Selftest::PowerOff));
        assert!(c.unknown.is_empty());
        let c = ok("bulkhead.zone=t1 bulkhead.hostname=h bulkhead.selftest=channel-garbage");
        assert_eq!(c.config.selftest, Some(Selftest::ChannelGarbage));
    }

    #[test]
    fn selftest_is_optional_and_kernel_parameters_are_skipped() {
        let c = ok("root=/dev/xvda ro bulkhead.zone=a.b_c-1 bulkhead.hostname=a.b-c earlyprintk=xen");
        assert_eq!(c.config.zone.as_str(), "a.b_c-1");
        assert_eq!(c.config.hostname.as_str(), "a.b-c");
        assert_eq!(c.config.selftest, None);
    }

    #[test]
    fn the_pod_network_comes_from_ip_gw_and_routes() {
        let c = ok("bulkhead.zone=z bulkhead.hostname=h bulkhead.ip=10.88.0.5/16 bulkhead.gw=10.88.0.1 \
                    bulkhead.routes=0.0.0.0/0,10.96.0.0/12@10.88.0.254");
        let n = c.config.network.unwrap_or_else(|| panic!("no network"));
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.name, "eth0");
        assert_eq!(n.address, (ip("10.88.0.5"), 16));
        assert_eq!(n.gateway, Some(ip("10.88.0.1")));
        assert_eq!(n.routes, [(ip("0.0.0.0"), 0, None), (ip("10.96.0.0"), 12, Some(ip("10.88.0.254")))]);
        assert_eq!(ok("bulkhead.zone=z bulkhead.hostname=h").config.network, None);
        let bare = ok("bulkhead.zone=z bulkhead.hostname=h bulkhead.ip=192.168.3.4/24").config.network;
        assert_eq!(bare.map(|n| (n.gateway, n.routes.len())), Some((None, 0)));
    }

    #[test]
    fn a_bad_pod_network_is_refused_naming_the_key() {
        for (line, key) in [
            ("bulkhead.ip=10.88.0.5", "ip"),
            ("bulkhead.ip=fd00::5/64", "ip"),
            ("bulkhead.ip=10.88.0.5/33", "ip"),
            ("bulkhead.gw=10.88.0.1", "gw"),
            ("bulkhead.ip=10.88.0.5/16 bulkhead.gw=gateway", "gw"),
            ("bulkhead.ip=10.88.0.5/16 bulkhead.routes=default", "routes"),
            ("bulkhead.ip=10.88.0.5/16 bulkhead.routes=0.0.0.0/0@x", "routes"),
            ("bulkhead.ip=10.88.0.5/16 bulkhead.routes=0.0.0.0/0,", "routes"),
        ] {
            match err(&format!("bulkhead.zone=z bulkhead.hostname=h {line}")) {
                CmdlineError::Invalid { key: k, .. } => assert_eq!(k, key, "{line}"),
                e => panic!("{line}: {e}"),
            }
        }
    }

    #[test]
    fn unknown_bulkhead_keys_are_collected_not_fatal() {
        let c = ok("bulkhead.zone=z bulkhead.future=1 bulkhead.hostname=h bulkhead.flag bulkheadx.zone=q");
        assert_eq!(c.unknown, ["bulkhead.future", "bulkhead.flag"]);
        assert_eq!(c.config.zone.as_str(), "z");
    }

    #[test]
    fn invalid_hostnames_are_refused() {
        for bad in ["-bad-", "bad-", "Upper", "a..b", ".a", "a.", "under_score", "sp ace", "é"] {
            let line = format!("bulkhead.zone=z \"bulkhead.hostname={bad}\"");
            match err(&line) {
                CmdlineError::Invalid { key: "hostname", value, .. } => assert_eq!(value, bad),
                e => panic!("{bad:?}: {e:?}"),
            }
        }
        let long_label = "a".repeat(64);
        assert!(matches!(
            err(&format!("bulkhead.zone=z bulkhead.hostname={long_label}")),
            CmdlineError::Invalid { key: "hostname", .. }
        ));
    }

    #[test]
    fn hostname_length_limit_is_64() {
        let name64 = format!("{}.{}", "a".repeat(32), "b".repeat(31));
        assert_eq!(name64.len(), 64);
        assert!(Hostname::parse(&name64).is_ok());
        let name65 = format!("{}.{}", "a".repeat(32), "b".repeat(32));
        assert!(Hostname::parse(&name65).is_err());
        assert!(Hostname::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn the_fatal_message_names_key_value_and_rule() {
        let e = err("bulkhead.zone=t1 bulkhead.hostname=-bad-");
        assert_eq!(e.to_string(), "invalid bulkhead.hostname=\"-bad-\": a label must not start or end with '-'");
    }

    #[test]
    fn missing_duplicate_and_empty_keys_are_errors() {
        assert_eq!(err("bulkhead.hostname=h"), CmdlineError::Missing { key: "zone" });
        assert_eq!(err("bulkhead.zone=z"), CmdlineError::Missing { key: "hostname" });
        assert_eq!(err("bulkhead.zone=z bulkhead.zone=y bulkhead.hostname=h"), CmdlineError::Duplicate { key: "zone" });
        assert!(matches!(err("bulkhead.zone= bulkhead.hostname=h"), CmdlineError::Invalid { key: "zone", .. }));
        assert!(matches!(err("bulkhead.zone bulkhead.hostname=h"), CmdlineError::Invalid { key: "zone", .. }));
        assert!(matches!(
            err("bulkhead.zone=z bulkhead.hostname=h bulkhead.selftest=reboot"),
            CmdlineError::Invalid { key: "selftest", .. }
        ));
        assert!(matches!(err("bulkhead.zone=a/b bulkhead.hostname=h"), CmdlineError::Invalid { key: "zone", .. }));
        assert!(matches!(
            err(&format!("bulkhead.zone={} bulkhead.hostname=h", "z".repeat(65))),
            CmdlineError::Invalid { key: "zone", .. }
        ));
    }

    #[test]
    fn quotes_and_whitespace_follow_the_kernel() {
        assert_eq!(
            split_params("  a=1\t\"b=x y\"  c=\"p q\"\n d").ok(),
            Some(vec!["a=1".to_owned(), "b=x y".to_owned(), "c=p q".to_owned(), "d".to_owned()])
        );
        assert_eq!(split_params("").ok(), Some(vec![]));
        assert_eq!(split_params(" \n ").ok(), Some(vec![]));
        assert_eq!(split_params("x=\"\"").ok(), Some(vec!["x=".to_owned()]));
        assert_eq!(split_params("a \"b c"), Err(CmdlineError::UnbalancedQuote));
        // A quoted value with a space is one parameter, and then an invalid host name.
        assert!(matches!(
            err("bulkhead.zone=z bulkhead.hostname=\"a b\""),
            CmdlineError::Invalid { key: "hostname", .. }
        ));
        let c = ok("\"bulkhead.zone=z\"\tbulkhead.hostname=\"h\"\n");
        assert_eq!((c.config.zone.as_str(), c.config.hostname.as_str()), ("z", "h"));
    }

    #[test]
    fn the_channel_path_is_optional_relative_and_bounded() {
        assert_eq!(ok("bulkhead.zone=z bulkhead.hostname=h").config.channel, None);
        let c = ok("bulkhead.zone=z bulkhead.hostname=h bulkhead.channel=bulkhead/channel");
        assert_eq!(c.config.channel.as_ref().map(ChannelPath::as_str), Some("bulkhead/channel"));
        for bad in ["/local/domain/0/x", "a//b", "a/", "a b", "x".repeat(41).as_str(), "", "a.b"] {
            let line = format!("bulkhead.zone=z bulkhead.hostname=h \"bulkhead.channel={bad}\"");
            assert!(matches!(err(&line), CmdlineError::Invalid { key: "channel", .. }), "{bad:?}");
        }
    }
}
