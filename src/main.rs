//! The `freeagent` binary: parses the command line and runs a subcommand.

#[cfg(feature = "ssr")]
fn main() -> anyhow::Result<std::process::ExitCode> {
    freeagent::cli::main()
}

#[cfg(not(feature = "ssr"))]
fn main() {
    // The browser build has no binary; cargo-leptos builds this with `ssr`.
}
