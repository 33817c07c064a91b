//! The `ferry` binary: all logic lives in the library; this only hands over argv (and
//! picks the allocator: sealing and applying bundles allocate and free millions of
//! small values, which mimalloc does several times faster than the system's).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ferry::cli::main());
}
