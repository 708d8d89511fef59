//! Copying C strings into owned Rust strings at the FFI boundary.

use std::ffi::c_char;

/// Copy an optional C string into an owned `String`, bounded to `max` bytes.
///
/// # Safety
/// `p` must be NULL or point to memory readable up to a NUL byte or `max`
/// bytes, whichever comes first.
pub(crate) unsafe fn bounded_c_str(p: *const c_char, max: usize) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees p is readable up to a NUL or max bytes;
    // strnlen never reads beyond either.
    let len = unsafe { libc::strnlen(p, max) };
    // SAFETY: the len bytes before the NUL (or the bound) were just proven
    // readable by strnlen.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn bounded_c_str_stops_at_bound() {
        let s = CString::new("abcdef").unwrap_or_default();
        // SAFETY: s is a valid NUL-terminated string.
        assert_eq!(unsafe { bounded_c_str(s.as_ptr(), 3) }.as_deref(), Some("abc"));
        // SAFETY: as above.
        assert_eq!(unsafe { bounded_c_str(s.as_ptr(), 64) }.as_deref(), Some("abcdef"));
        // SAFETY: NULL is explicitly allowed.
        assert_eq!(unsafe { bounded_c_str(std::ptr::null(), 3) }, None);
    }
}
