//! Field checks shared by the message types, and list deserialisers that stop at their limit.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};

use crate::error::ValidationError;
use crate::limits;

/// Checks a string: at most `max` bytes, no NUL.
pub(crate) fn string(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong { field, len: s.len(), max });
    }
    if s.as_bytes().contains(&0) {
        return Err(ValidationError::ContainsNul { field });
    }
    Ok(())
}

/// Checks a string like [`string`] and also that it is not empty.
pub(crate) fn non_empty_string(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    string(field, s, max)
}

/// Checks a list length.
pub(crate) fn count(field: &'static str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::TooMany { field, count, max });
    }
    Ok(())
}

/// Checks a byte chunk against [`limits::MAX_DATA_CHUNK`].
pub(crate) fn chunk(field: &'static str, data: &[u8]) -> Result<(), ValidationError> {
    if data.len() > limits::MAX_DATA_CHUNK {
        return Err(ValidationError::TooLong { field, len: data.len(), max: limits::MAX_DATA_CHUNK });
    }
    Ok(())
}

/// Checks an absolute path of at most [`limits::MAX_PATH_LEN`] bytes without NUL.
pub(crate) fn absolute_path(field: &'static str, p: &str) -> Result<(), ValidationError> {
    non_empty_string(field, p, limits::MAX_PATH_LEN)?;
    if !p.starts_with('/') {
        return Err(ValidationError::NotAbsolute { field });
    }
    Ok(())
}

/// Checks an RFC 1123 host name: dot-separated labels of 1-63 ASCII letters, digits and inner hyphens, at most
/// [`limits::MAX_HOSTNAME_LEN`] bytes in all.
pub(crate) fn hostname(field: &'static str, h: &str) -> Result<(), ValidationError> {
    non_empty_string(field, h, limits::MAX_HOSTNAME_LEN)?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if h.split('.').all(label_ok) { Ok(()) } else { Err(ValidationError::InvalidHostname { field }) }
}

/// Checks a block device name as the zone's /dev shows it (`xvdb`): ASCII lowercase letters and digits only,
/// so it can never name a path outside /dev.
pub(crate) fn device_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    non_empty_string(field, name, limits::MAX_DEVICE_NAME_LEN)?;
    if name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ValidationError::InvalidDeviceName { field })
    }
}

/// Checks a signal number against `1..=`[`limits::MAX_SIGNAL`].
pub(crate) fn signal(signal: i32) -> Result<(), ValidationError> {
    if (1..=limits::MAX_SIGNAL).contains(&signal) { Ok(()) } else { Err(ValidationError::InvalidSignal { signal }) }
}

/// Deserialises a list, failing as soon as it would exceed `max` entries.
///
/// serde's own `Vec` impl trusts the encoded length for its loop, so a frame of 1 MiB holding a million one-byte
/// empty strings would make it build a million `String`s (24 MiB) before `validate()` could object. This visitor
/// pre-allocates at most `min(size_hint, max)` entries (postcard gives no hint when the claimed length exceeds the
/// remaining input) and stops at entry `max + 1`.
fn bounded_vec<'de, D, T>(d: D, field: &'static str, max: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct BoundedVisitor<T> {
        field: &'static str,
        max: usize,
        _t: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} entries for {}", self.max, self.field)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > self.max {
                return Err(A::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(item) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(A::Error::invalid_length(self.max + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(BoundedVisitor { field, max, _t: PhantomData })
}

pub(crate) fn de_args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded_vec(d, "argv", limits::MAX_ARGS)
}

pub(crate) fn de_env<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded_vec(d, "env", limits::MAX_ENV)
}

pub(crate) fn de_gids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    bounded_vec(d, "additional_gids", limits::MAX_ADDITIONAL_GIDS)
}

pub(crate) fn de_security_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded_vec(d, "security paths", limits::MAX_SECURITY_PATHS)
}

pub(crate) fn de_seccomp_programs<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded_vec(d, "seccomp programs", limits::MAX_SECCOMP_PROGRAMS)
}

pub(crate) fn de_bpf<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded_vec(d, "seccomp instructions", limits::MAX_SECCOMP_INSTRUCTIONS)
}

pub(crate) fn de_mounts<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded_vec(d, "mounts", limits::MAX_MOUNTS)
}

pub(crate) fn de_volume_entries<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    bounded_vec(d, "volume entries", limits::MAX_VOLUME_ENTRIES)
}
