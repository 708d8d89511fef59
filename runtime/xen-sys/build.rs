//! Link flags only. The bindings themselves are generated at development time
//! by `ci/gen-xen-bindings` and checked in as `src/generated.rs`.
//!
//! Two link modes:
//! * `toolstack` (default): dom0's libraries, shared, libxl included.
//! * without it: only what a guest needs for a vchan (libxenvchan and the
//!   libraries it sits on), linked statically, for the zone's static init.
//!   When cargo unifies both (a workspace build), the shared mode wins: the
//!   static init is built on its own by `ci/zone-initrd`.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Debian's libxen-dev installs both kinds into the default linker search
    // path (/usr/lib/x86_64-linux-gnu), so no search-path flags are needed.
    if std::env::var_os("CARGO_FEATURE_TOOLSTACK").is_some() {
        for lib in ["xenlight", "xenctrl", "xenstore", "xenevtchn", "xengnttab", "xenvchan", "xentoollog"] {
            println!("cargo::rustc-link-lib=dylib={lib}");
        }
    } else {
        // rustc looks for static archives only in -L paths; ask pkg-config where libxen-dev put them.
        let libdir = std::process::Command::new("pkg-config")
            .args(["--variable=libdir", "xenvchan"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/usr/lib/x86_64-linux-gnu".to_owned());
        println!("cargo::rustc-link-search=native={libdir}");
        // Static archives resolve left to right: users before what they use.
        for lib in ["xenvchan", "xenstore", "xengnttab", "xenevtchn", "xentoollog", "xentoolcore"] {
            println!("cargo::rustc-link-lib=static={lib}");
        }
    }
}
