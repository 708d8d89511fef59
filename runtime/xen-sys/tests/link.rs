//! Proves the link flags from build.rs resolve against Debian's libxen-dev
//! and that the bindings' enum constants agree with the C libraries' own
//! string tables. Uses only pure lookup functions, so no Xen is needed.

use std::ffi::CStr;

use bulkhead_xen_sys as sys;

fn c_str(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL results of the *_to_string lookups below point to
    // static NUL-terminated strings in the Xen libraries.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

#[test]
fn libxenlight_links_and_enums_match() {
    // SAFETY: pure table lookups taking any integer.
    let (fail, crash, pv) = unsafe {
        (
            sys::libxl_error_to_string(sys::ERROR_FAIL),
            sys::libxl_shutdown_reason_to_string(sys::LIBXL_SHUTDOWN_REASON_CRASH),
            sys::libxl_domain_type_to_string(sys::LIBXL_DOMAIN_TYPE_PV),
        )
    };
    assert_eq!(c_str(fail).as_deref(), Some("fail"));
    assert_eq!(c_str(crash).as_deref(), Some("crash"));
    assert_eq!(c_str(pv).as_deref(), Some("pv"));
}

#[test]
fn libxentoollog_links() {
    // SAFETY: pure table lookup.
    let warn = unsafe { sys::xtl_level_to_string(sys::XTL_WARN) };
    assert_eq!(c_str(warn).as_deref(), Some("warning"));
}

#[test]
fn libxenstore_links() {
    // SAFETY: xs_path_is_subpath only compares the two NUL-terminated
    // strings.
    let sub = unsafe { sys::xs_path_is_subpath(c"/local".as_ptr(), c"/local/domain/0".as_ptr()) };
    assert!(sub);
}

#[test]
fn api_constants() {
    assert_eq!(sys::LIBXL_VERSION, 0);
    assert_eq!(sys::XC_PAGE_SIZE, 4096);
    assert_eq!(sys::XENSTORE_PAYLOAD_MAX, 4096);
    assert_eq!(sys::libxl_sigchld_owner_libxl_always_selective_reap, 3);
}
