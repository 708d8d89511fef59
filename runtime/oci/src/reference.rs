//! Image references, normalised the way Docker does: "busybox" is "docker.io/library/busybox:latest".

/// Longest reference accepted (Docker's limit on the name part).
pub const MAX_REFERENCE_LEN: usize = 255;

/// Why a reference is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The input.
    pub reference: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

/// True for a registry host\[:port\] as references spell it.
pub(crate) fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-') && !l.starts_with('-'))
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|x| x.is_ascii_digit()))
}

/// A reference taken apart, normalised (see [`normalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host\[:port\], e.g. "docker.io".
    pub domain: String,
    /// Repository path, e.g. "library/busybox".
    pub path: String,
    /// The tag; "latest" when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// "sha256:<64 hex>", when given.
    pub digest: Option<String>,
}

impl ImageName {
    /// The normalised string form (`domain/path:tag`, `domain/path@digest` or `domain/path:tag@digest`).
    pub fn normalized(&self) -> String {
        let mut out = format!("{}/{}", self.domain, self.path);
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }

    /// `domain/path` (the repository, without tag or digest).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

/// Normalises `reference` to `domain/path:tag` (or `domain/path@sha256:...`, with the tag if one was given).
/// A missing domain is docker.io, a one-component docker.io path gets `library/`, a missing tag is `latest`.
pub fn normalize(reference: &str) -> Result<String, ReferenceError> {
    parse(reference).map(|n| n.normalized())
}

/// Takes `reference` apart, normalising it as [`normalize`] does.
pub fn parse(reference: &str) -> Result<ImageName, ReferenceError> {
    let err = |reason| ReferenceError { reference: reference.to_owned(), reason };
    if reference.is_empty() {
        return Err(err("it is empty"));
    }
    if reference.len() > MAX_REFERENCE_LEN {
        return Err(err("it is longer than 255 characters"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => {
            let hex = d.strip_prefix("sha256:").ok_or_else(|| err("the digest must be sha256:<64 hex digits>"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(err("the digest must be sha256:<64 hex digits>"));
            }
            (r, Some(d))
        }
        None => (reference, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(err("the tag must be 1-128 of A-Z a-z 0-9 _ . - not starting with . or -"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => (first, path),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
    if !valid_domain(domain) {
        return Err(err("the registry host is not a valid host[:port]"));
    }
    if !path.split('/').all(valid_component) {
        return Err(err("name components must be lowercase letters, digits and . _ - (not at either end)"));
    }
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
    let tag = match (tag, digest) {
        (Some(t), _) => Some(t.to_owned()),
        (None, None) => Some("latest".to_owned()),
        (None, Some(_)) => None,
    };
    Ok(ImageName { domain: domain.to_owned(), path, tag, digest: digest.map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_are_expanded() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox:test", "docker.io/library/busybox:test"),
            ("index.docker.io/user/app", "docker.io/user/app:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("ghcr.io/org/app:v1.2", "ghcr.io/org/app:v1.2"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app", "localhost/app:latest"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("busybox@{d}")), Ok(format!("docker.io/library/busybox@{d}")));
    }

    #[test]
    fn malformed_references_are_refused_with_a_reason() {
        for bad in ["", "Busybox", "busy box", "app:", "app:-x", "a//b", "app@sha256:12", "ex ample.com/a", "-a"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
        let e = normalize("UPPER").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"UPPER\"") && e.contains("lowercase"), "{e}");
    }

    #[test]
    fn parts_of_a_reference() -> Result<(), ReferenceError> {
        let d = format!("sha256:{}", "b".repeat(64));
        let n = parse(&format!("127.0.0.1:5000/a/b:v1@{d}"))?;
        assert_eq!((n.domain.as_str(), n.path.as_str()), ("127.0.0.1:5000", "a/b"));
        assert_eq!((n.tag.as_deref(), n.digest.as_deref()), (Some("v1"), Some(d.as_str())));
        assert_eq!(n.repository(), "127.0.0.1:5000/a/b");
        let n = parse("busybox")?;
        assert_eq!(n.tag.as_deref(), Some("latest"));
        assert_eq!(n.digest, None);
        Ok(())
    }
}
