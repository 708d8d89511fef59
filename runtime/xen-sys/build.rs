//! Link flags only. The bindings themselves are generated at development time
//! by `ci/gen-xen-bindings` and checked in as `src/generated.rs`.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Debian's libxen-dev installs these into the default linker search path
    // (/usr/lib/x86_64-linux-gnu), so no search-path flags are needed.
    for lib in ["xenlight", "xenctrl", "xenstore", "xenevtchn", "xengnttab", "xenvchan", "xentoollog"] {
        println!("cargo::rustc-link-lib=dylib={lib}");
    }
}
