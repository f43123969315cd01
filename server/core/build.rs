//! Exports the target triple this server is built for: the agent and supervisor builds it
//! ships with (see `src/builtin.rs`) are served as builds for exactly that target.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=OUTPOST_TARGET={target}");
    println!("cargo:rerun-if-env-changed=TARGET");
}
