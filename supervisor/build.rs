//! Exports the target triple this supervisor is built for: it asks the server for releases of
//! exactly that target.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=OUTPOST_TARGET={target}");
    println!("cargo:rerun-if-env-changed=TARGET");
}
