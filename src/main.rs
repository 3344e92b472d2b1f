//! The `freeagent` binary: parses the command line and runs a subcommand.

// glibc's malloc took about 40% of the time serving `/` under load.
#[cfg(feature = "ssr")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "ssr")]
fn main() -> anyhow::Result<std::process::ExitCode> {
    freeagent::cli::main()
}

#[cfg(not(feature = "ssr"))]
fn main() {
    // The browser build has no binary; cargo-leptos builds this with `ssr`.
}
