//! `freedumb`: every FREEDUMB service in one binary. `freedumb serve auth`
//! runs one service, `freedumb serve all` runs them all in one process.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_allocations_to_the_system();
    freedumb::cli::main(freedumb::cli::Cli::parse())
}

/// glibc serves allocations above a threshold with their own mmap, but
/// raises that threshold each time such a block is freed, up to 32 MiB. After
/// a few password hashes (19 MiB each, on blocking-pool threads with arenas
/// of their own) every later one comes from an arena that keeps the memory:
/// a burst of 68 sign-ins left 330 MiB resident for good. A fixed 1 MiB
/// threshold hands big blocks back to the system when they are freed.
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
